"""Figure 2 (the loss landscape) and the forgetting curve: where the trajectory and the predictions sit upstream.

Landscape (one unit, on the trajectory of `fraction`): Θ(S−1) .. Θ0 of Table 1's trajectory and the predicted
Θ(−1) .. Θ(−3) of each method in `methods` (Table 1's predict units, so nothing is recomputed) are flattened over
the model's parameters (norm γ/β included; buffers are not parameters) and projected on the plane of their first
two principal components (fit on all of them, or on the trajectory only: `fit_on`). Upstream test accuracy is
evaluated on a `grid` x `grid` lattice of that plane spanning the points plus `margin` of their extent on each side;
every point's own (unprojected) weights are evaluated the same way, and its distance off the plane is recorded.

BatchNorm running statistics (our choice, `bn`): "recalibrate" (default) re-estimates them for every evaluated
weight vector from `bn_images` images of D0 (cumulative average of train-mode forward passes, no augmentation),
because a lattice point has no statistics of its own and the trajectory file keeps only Θ0's; "keep" uses Θ0's
everywhere (what transfer starts from). The trajectory's own accuracies (each Θk with the statistics it was
trained with) are kept beside them as `trained_acc`.

Forgetting curve (one unit per data fraction): upstream accuracy and ‖Θ − Θ0‖ of every session against its data
size |Dk|, and of each method's predictions at their virtual sizes |D0| / r^m, with the same evaluation.

Points carry `step`: −k for Θk of the trajectory, m for the prediction Θ(−m); data size = |D0| r^(−step).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from know.config import ForgetCfg, LandscapeCfg
from know.errors import UnknownName
from know.forgetting import build_model, load_data, session_subsets
from know.io import atomic_write_text
from know.train import evaluate, weight_distance
from know.trajectory import Trajectory
GRAM_CHUNK = 1 << 22  # parameters per chunk of the Gram matrix (bounds the float64 working copy)




EVAL_FIELDS = ("methods", "bn", "bn_images", "eval_images", "limit_steps")  # what the forgetting-curve units depend on


# ---------------------------------------------------------------- evaluating weights upstream

@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running statistics from `x` (equal-weight average over batches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


class Evaluator:
    """Upstream test accuracy of state_dicts of the forgetting run's model, under the BN policy `lc.bn`."""

    def __init__(self, fc, lc: LandscapeCfg):
        if lc.bn not in ("recalibrate", "keep"):
            raise UnknownName(f"unknown BN policy '{lc.bn}'; choices: recalibrate, keep")
        if lc.eval_images is not None:
            fc = replace(fc, eval_images=lc.eval_images)
        train, self.test = load_data(fc)
        self.model = build_model(fc, train)
        bn_images = lc.bn_images if lc.limit_steps is None else min(lc.bn_images, lc.limit_steps * fc.eval_batch_size)
        d0 = session_subsets(fc, len(train))[0][:bn_images]
        self.calib = train.x[d0.to(train.y.device)]  # (bn_images, C, H, W)
        self.bn, self.batch, self.limit = lc.bn, fc.eval_batch_size, lc.limit_steps

    def __call__(self, state: dict[str, Tensor]) -> float:
        self.model.load_state_dict(state)
        if self.bn == "recalibrate":
            recalibrate_bn(self.model, self.calib, self.batch)
        return evaluate(self.model, self.test, self.batch, self.limit)


# ---------------------------------------------------------------- the points and their plane

def gather_points(traj, deps: dict[str, Path], methods) -> list[tuple[dict, dict[str, Tensor]]]:
    """(description, state_dict) of Θ(S−1) .. Θ0, then of each method's Θ(−1), Θ(−2), ..."""
    accs = traj.meta.get("test_metric") or [None] * traj.num_sessions
    points = [({"method": "trajectory", "step": -k, "label": f"Θ{k}", "trained_acc": accs[k]}, traj.theta(k))
              for k in range(traj.num_sessions - 1, -1, -1)]
    for m in methods:
        files = sorted(Path(deps[m]).glob("step*.pt"), key=lambda p: int(p.stem[4:]))
        for f in files:
            step = int(f.stem[4:])
            points.append(({"method": m, "step": step, "label": f"Θ(−{step})", "trained_acc": None},
                           torch.load(f, map_location="cpu")))
    return points


def flatten(state: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([state[n].detach().reshape(-1).float().cpu() for n in names])  # (P,)


def gram(c: Tensor) -> Tensor:
    """c c^T in float64, over column chunks."""
    g = torch.zeros(c.shape[0], c.shape[0], dtype=torch.float64)
    for start in range(0, c.shape[1], GRAM_CHUNK):
        part = c[:, start:start + GRAM_CHUNK].double()
        g += part @ part.T
    return g


def pca_plane(x: Tensor, fit: list[int]) -> tuple[Tensor, Tensor, list[float]]:
    """Mean (P,), two orthonormal axes (2, P) and their explained-variance ratios, from the rows `fit` of x (n, P)."""
    rows = x[fit]
    mean = (rows.sum(0, dtype=torch.float64) / len(fit)).float()
    centred = rows - mean
    lam, vec = torch.linalg.eigh(gram(centred))
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    axes = vec[:, :2].T.float() @ centred  # (2, P)
    axes[0] /= axes[0].norm().clamp_min(1e-30)
    axes[1] -= (axes[1] @ axes[0]) * axes[0]  # re-orthogonalise against float32 rounding
    axes[1] /= axes[1].norm().clamp_min(1e-30)
    total = float(lam.sum()) or 1.0
    return mean, axes, [float(v) / total for v in lam[:2]]


def project(x: Tensor, mean: Tensor, axes: Tensor) -> tuple[Tensor, Tensor]:
    """Plane coordinates (n, 2) of the rows of x and their distances off the plane (n,)."""
    centred = x - mean
    coords = centred @ axes.T
    return coords, (centred - coords @ axes).norm(dim=1)  # direct: |c|² − |coords|² cancels in float32


def lattice(coords: Tensor, n: int, margin: float) -> tuple[list[float], list[float]]:
    """n values per axis spanning the points plus `margin` of their extent on each side."""
    lo, hi = coords.min(0).values, coords.max(0).values
    pad = (hi - lo).clamp_min(1e-12) * margin
    return [torch.linspace(float(lo[i] - pad[i]), float(hi[i] + pad[i]), n).tolist() for i in (0, 1)]


def plane_state(mean: Tensor, axes: Tensor, a: float, b: float, template: dict[str, Tensor],
                names: list[str]) -> dict[str, Tensor]:
    """The state_dict at (a, b) of the plane; buffers (and anything not in `names`) from `template`."""
    vec, state, i = mean + a * axes[0] + b * axes[1], dict(template), 0
    for n in names:
        k = template[n].numel()
        state[n] = vec[i:i + k].reshape(template[n].shape)
        i += k
    return state


def evaluate_grid(ev: Evaluator, mean: Tensor, axes: Tensor, axis_values, template: dict, names: list[str],
                  partial: Path) -> list[dict]:
    """Accuracy at every lattice point, row by row; finished rows are kept in `partial` so a rerun resumes."""
    a_vals, b_vals = axis_values
    rows = json.loads(partial.read_text()) if partial.is_file() else []
    for a in a_vals[len(rows) // len(b_vals):]:
        rows += [{"kind": "grid", "a": a, "b": b, "acc": ev(plane_state(mean, axes, a, b, template, names))}
                 for b in b_vals]
        atomic_write_text(partial, json.dumps(rows))
    return rows


def unit_landscape(cfg: dict, out: Path, deps: dict) -> dict:
    """Unit function: the plane, the lattice accuracies and the points (see the module docstring)."""
    lc, fc = LandscapeCfg(**cfg["landscape"]), ForgetCfg(**cfg["forget"])
    if lc.fit_on not in ("all", "trajectory"):
        raise ValueError(f"fit_on must be 'all' or 'trajectory', not '{lc.fit_on}'")
    traj = Trajectory.load(deps["trajectory"] / "trajectory.safetensors")
    points, names = gather_points(traj, deps, lc.methods), list(traj.params)
    x = torch.stack([flatten(s, names) for _, s in points])  # (points, P)
    fit = [i for i, (p, _) in enumerate(points) if lc.fit_on == "all" or p["method"] == "trajectory"]
    mean, axes, ratio = pca_plane(x, fit)
    coords, off = project(x, mean, axes)
    ev = Evaluator(fc, lc)
    rows = [{"kind": "point", **p, "a": float(c[0]), "b": float(c[1]), "off_plane": float(o), "acc": ev(s)}
            for (p, s), c, o in zip(points, coords, off)]
    n = lc.grid if lc.limit_steps is None else min(lc.grid, lc.limit_steps + 1)
    grid = evaluate_grid(ev, mean, axes, lattice(coords, n, lc.margin), traj.theta(0), names,
                         out / "grid_partial.json")
    return {"points": rows, "grid": grid, "explained_variance": ratio, "params": x.shape[1]}


def unit_upstream(cfg: dict, out: Path, deps: dict) -> dict:
    """Unit function: accuracy and ‖Θ − Θ0‖ of every session and prediction, with its (virtual) data size."""
    lc, fc = LandscapeCfg(**cfg["eval"]), ForgetCfg(**cfg["forget"])
    traj = Trajectory.load(deps["trajectory"] / "trajectory.safetensors")
    sizes, theta0, names, ev = traj.meta["session_sizes"], traj.theta(0), list(traj.params), Evaluator(fc, lc)
    rows = []
    for p, state in gather_points(traj, deps, lc.methods):
        size = sizes[-p["step"]] if p["method"] == "trajectory" else sizes[0] / fc.rate ** p["step"]
        rows.append({**p, "data_size": size, "acc": ev(state),
                     "dist_to_theta0": weight_distance(state, theta0, names)})
    return {"rows": rows}
