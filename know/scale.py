"""When does the official KNOWN apply? Weight scale against the step each predictor takes (figure_scale).

KNOWN predicts a tanh-bounded increment from raw weight values, with no normalisation, and was meta-trained on small
CNNs: on a network whose weights are much larger (a narrow ResNet-18) its steps can dwarf the trajectory's own.
For every network of the scale study (resnet18_know at several widths, and SimpleNet, the meta-dataset's network,
as the in-distribution reference), trained with one recipe (`ScaleCfg`), one unit measures per parameter kind
(conv, fc, bias, norm, and "all"):
- the weight std of Θ0;
- each forgetting session's step norm ‖Θk − Θ(k+1)‖ (k = 0 .. S−2);
- for each predictor (KNOWN official and ours, WNN, TaskVector, LogFit) and recurrence m: the step ratio
  ‖Θ̂(−m) − Θ̂(−m+1)‖ / ‖Θ0 − Θ1‖ (Θ̂(0) = Θ0): about 1 means a step like the trajectory's, much more an overshoot;
- the upstream test accuracy of Θ0 and of every predicted point (BatchNorm statistics re-estimated, as the
  landscape does).
"""
from __future__ import annotations

from pathlib import Path

import torch

from know.config import ForgetCfg, LandscapeCfg
from know.landscape import Evaluator, gather_points
from know.trajectory import Trajectory

KINDS = ("conv", "fc", "bias", "norm", "all")


def _norm(state_a: dict, state_b: dict | None, names: list[str]) -> float:
    """‖a − b‖ (or ‖a‖ when b is None) over the named tensors, in float64."""
    sq = sum(float(((state_a[n].double() - (state_b[n].double() if state_b is not None else 0)) ** 2).sum())
             for n in names)
    return sq ** 0.5


def kind_names(traj: Trajectory) -> dict[str, list[str]]:
    """Parameter names per kind, "all" being every parameter."""
    out = {k: [n for n in traj.params if traj.kinds[n] == k] for k in KINDS[:-1]}
    out["all"] = list(traj.params)
    return {k: v for k, v in out.items() if v}


def unit_scale(cfg: dict, out: Path, deps: dict) -> dict:
    """Unit function: the rows of one network of the scale study (see the module docstring)."""
    fc, lc = ForgetCfg(**cfg["forget"]), LandscapeCfg(**cfg["eval"])
    traj = Trajectory.load(deps["trajectory"] / "trajectory.safetensors")
    names, theta = kind_names(traj), [traj.theta(k) for k in range(traj.num_sessions)]
    ident = {"network": cfg["network"], "width": cfg["width"]}
    rows = []
    for kind, ns in names.items():
        flat = torch.cat([theta[0][n].reshape(-1).double() for n in ns])
        first = _norm(theta[0], theta[1], ns)
        rows.append({**ident, "kind": kind, "quantity": "weight_std", "value": float(flat.std()),
                     "params": flat.numel()})
        rows += [{**ident, "kind": kind, "quantity": "session_step", "step": k,
                  "value": _norm(theta[k], theta[k + 1], ns)} for k in range(traj.num_sessions - 1)]
        for method in cfg["methods"]:
            prev = theta[0]
            for f in sorted(Path(deps[method]).glob("step*.pt"), key=lambda p: int(p.stem[4:])):
                state = torch.load(f, map_location="cpu")
                rows.append({**ident, "kind": kind, "quantity": "step_ratio", "method": method,
                             "step": int(f.stem[4:]), "value": _norm(state, prev, ns) / max(first, 1e-30)})
                prev = state
    ev = Evaluator(fc, lc)
    for p, state in gather_points(traj, deps, cfg["methods"]):
        if p["method"] == "trajectory" and p["step"] != 0:
            continue
        rows.append({**ident, "kind": "all", "quantity": "upstream_acc", "method": p["method"], "step": p["step"],
                     "value": ev(state)})
    return {"rows": rows}
