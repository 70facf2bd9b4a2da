"""Meta-training KNOWN on forgetting trajectories (`know meta-train`).

A trajectory stacks S sessions per parameter, oldest / most-forgotten first and Θ0 (full data) last. Read in that
order the sessions *learn*: each step adds data. Every scalar gives one sample per window position: `window`
consecutive values as input, the next value (towards more data) as target. Meta-training therefore needs
S >= window + 1 sessions (the official meta-dataset has 7, so window 5 gives 2 samples per scalar); a trajectory
with exactly S = window sessions can be KNOW-predicted but carries no target, and is skipped here.

One KNOWN per model kind (conv / fc / bias) is trained with the official loss, L1 between x[:, -1] + KNOWN(x, dx)
and the target (Keras 'mae' with Adam(1e-3)). Validation uses whole held-out trajectories and is reported beside
two references, copy-last and linear extrapolation, so the CSV shows whether KNOWN learned anything.

Outputs in `out_dir`: `metrics.csv`, `known_<kind>.safetensors` (best validation MAE per kind, `save_known`),
`checkpoint.pt` (models, optimisers, next epoch: a rerun resumes from it), `config.json`, `summary.json`.
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from know.config import MetaTrainCfg, override, parse_overrides
from know.device import resolve_device
from know import __version__
from know.errors import KnowError, TrajectoryError
from know.fastknown import FastKNOWN
from know import routes
from know.io import atomic_save, atomic_write_text
from know.known import KNOWN, load_known, save_known
from know.trajectory import Trajectory, load_official_mat

# trajectory parameter kind -> KNOWN model, the simplest routing (tests, custom runs); by default meta-training
# uses the same policy as prediction, `know.predict.route` with cfg.routing
DEFAULT_ROUTE: dict[str, str] = {"conv": "conv", "fc": "fc", "bias": "bias"}
CSV_FIELDS = ("epoch", "kind", "train_mae", "val_mae", "val_mae_copy_last", "val_mae_linear")
EVAL_ROWS = 1 << 18  # rows per evaluation call (bounds activation memory)




# fields that may change when resuming; any other change means different samples or a different run
RESUMABLE_CHANGES = ("epochs", "device", "progress")

Route = Mapping[str, str] | Callable[[str, str, tuple], "str | None"]


# ----------------------------------------------------------------------------------------------------------------
# Samples


def windows_of(stack: torch.Tensor, window: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """(S, *shape) oldest first -> rows (n, window + 1): `window` inputs, then the next value as target.

    Without `index`, all P * (S - window) rows (scalar-major); with it, only rows `index` of that order.
    """
    flat = stack.reshape(stack.shape[0], -1)  # (S, P)
    if index is None:
        return flat.T.unfold(1, window + 1, 1).reshape(-1, window + 1)  # (P * positions, window + 1)
    positions = stack.shape[0] - window
    scalar, start = index // positions, index % positions  # (n,)
    steps = start[:, None] + torch.arange(window + 1)  # (n, window + 1) session indices
    return flat[steps, scalar[:, None]]  # (n, window + 1)


def prediction_route(routing: str) -> Route:
    """The routing `know predict` uses, as a meta-training route (unknown name: UnknownName with the choices)."""
    routes.route("conv", (1, 1, 3, 3), routing)  # validate the name now, not at the first parameter
    return lambda name, kind, shape: routes.route(kind, shape, routing)


def _route(route: Route, name: str, kind: str, shape: tuple) -> str | None:
    return route(name, kind, shape) if callable(route) else route.get(kind)


def trajectory_samples(traj, cfg: MetaTrainCfg, route: Route, cap: int, gen: torch.Generator) \
        -> dict[str, torch.Tensor]:
    """Samples of one trajectory per model kind: all rows, or a seeded random `cap` of them.

    Subsampling draws from each parameter in proportion to its size, so no (S, P) window tensor larger than
    the sample is ever built.
    """
    positions = traj.num_sessions - cfg.window
    groups: dict[str, list[torch.Tensor]] = {}
    for name, stack in traj.params.items():
        kind = _route(route, name, traj.kinds[name], tuple(stack.shape[1:]))
        if kind in cfg.kinds:
            groups.setdefault(kind, []).append(stack)
    out = {}
    for kind, stacks in groups.items():
        sizes = [s[0].numel() * positions for s in stacks]
        total = sum(sizes)
        if total <= cap:
            out[kind] = torch.cat([windows_of(s.float(), cfg.window) for s in stacks])
            continue
        takes = [round(cap * n / total) for n in sizes]
        out[kind] = torch.cat([windows_of(s.float(), cfg.window, torch.randperm(n, generator=gen)[:k])
                               for s, n, k in zip(stacks, sizes, takes)])
    return out


def _load(source):
    """A Trajectory, or a path to one (`.mat` = official meta-dataset layout, else our safetensors format)."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    return load_official_mat(path) if path.suffix.lower() == ".mat" else Trajectory.load(path)


def _name(source, i: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    meta = getattr(source, "meta", {}) or {}
    return str(meta.get("name") or meta.get("source_file") or f"trajectory_{i}")


def gather_samples(sources: list, cfg: MetaTrainCfg, route: Route, max_rows: int, salt: str) \
        -> tuple[dict[str, torch.Tensor], int]:
    """Samples of `sources` (loaded one at a time) per kind, and how many trajectories gave any.

    Each trajectory contributes at most max_rows / len(sources) rows per kind. Trajectories shorter than
    window + 1 sessions have no target and are skipped.
    """
    gen = torch.Generator().manual_seed(_seed(cfg.seed, salt))
    cap = max(1, max_rows // max(1, len(sources)))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in cfg.kinds}
    used = 0
    for src in sources:
        traj = _load(src)
        if traj.num_sessions < cfg.window + 1:
            print(f"meta-train: skipping {_name(src, 0)}: {traj.num_sessions} sessions, meta-training needs "
                  f"window + 1 = {cfg.window + 1}", file=sys.stderr)
            continue
        used += 1
        for kind, rows in trajectory_samples(traj, cfg, route, cap, gen).items():
            parts[kind].append(rows)
        del traj
    width = cfg.window + 1
    return {k: torch.cat(v) if v else torch.empty(0, width) for k, v in parts.items()}, used


def split_sources(sources: list, cfg: MetaTrainCfg) -> tuple[list, list]:
    """Seeded split into (train, val) by whole trajectory; at least one of each when there are 2 or more."""
    order = torch.randperm(len(sources), generator=torch.Generator().manual_seed(_seed(cfg.seed, "split")))
    n_val = 0 if len(sources) < 2 else min(len(sources) - 1, max(1, round(cfg.val_fraction * len(sources))))
    val, train = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    return [sources[i] for i in train], [sources[i] for i in val]


# ----------------------------------------------------------------------------------------------------------------
# Training


def residual_mae(model: KNOWN, rows: torch.Tensor) -> torch.Tensor:
    """Mean |x[:, -1] + KNOWN(x, dx) - target| over rows (N, window + 1)."""
    x, y = rows[:, :-1], rows[:, -1]
    dx = x[:, 1:] - x[:, :-1]  # float32, as the official helpers
    return (x[:, -1] + model(x, dx)[:, 0] - y).abs().mean()


def l1_penalty(model: KNOWN, cfg: MetaTrainCfg) -> torch.Tensor:
    """The official regularisers: L1 on the lift and project layers of both branches (kernel and bias)."""
    total = torch.zeros((), device=model.head.weight.device)
    for branch in (model.branch_x, model.branch_dx):
        for lin in (branch.lift, branch.project):
            total = total + cfg.l1_kernel * lin.weight.abs().sum() + cfg.l1_bias * lin.bias.abs().sum()
    return total


def train_known_epoch(model: KNOWN, opt: torch.optim.Optimizer, rows: torch.Tensor, cfg: MetaTrainCfg,
                      gen: torch.Generator, bar) -> float:
    """One shuffled pass; returns the mean data MAE (without the regulariser). Non-finite batches are skipped."""
    perm = torch.randperm(rows.shape[0], generator=gen).to(rows.device)
    total = torch.zeros((), dtype=torch.float64, device=rows.device)  # summed on the device: no sync per batch
    count, skipped = 0, 0
    for step, i in enumerate(range(0, rows.shape[0], cfg.batch_size)):
        if cfg.limit_steps is not None and step == cfg.limit_steps:
            break
        batch = rows[perm[i:i + cfg.batch_size]]
        mae = residual_mae(model, batch)
        loss = mae + l1_penalty(model, cfg)
        bar.update(1)
        if not torch.isfinite(loss):  # an exp overflow on an extreme row; Keras would go on with NaN weights
            skipped += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += mae.detach() * batch.shape[0]
        count += batch.shape[0]
        if step % 50 == 0:
            bar.set_postfix(mae=f"{mae.item():.3g}")
    if count == 0:
        raise KnowError("every batch of the epoch gave a non-finite loss; lower --lr or check the trajectories")
    if skipped:
        print(f"meta-train: skipped {skipped} non-finite batches", file=sys.stderr)
    return total.item() / count


@torch.no_grad()
def evaluate_known(model: KNOWN, rows: torch.Tensor) -> float:
    """Mean |x[:, -1] + KNOWN(x, dx) - target| over rows (N, window + 1), through the fast inference path."""
    if rows.shape[0] == 0:
        return float("nan")
    fast = FastKNOWN(model)
    errs = [float((r[:, -2] + fast(r[:, :-1])[:, 0] - r[:, -1]).abs().sum())
            for r in rows.split(EVAL_ROWS)]
    return sum(errs) / rows.shape[0]


def reference_maes(rows: torch.Tensor) -> tuple[float, float]:
    """MAE of copy-last (x[-1]) and of linear extrapolation (x[-1] + (x[-1] - x[-2])) on rows (N, window + 1)."""
    if rows.shape[0] == 0:
        return float("nan"), float("nan")
    last, prev, y = rows[:, -2].double(), rows[:, -3].double(), rows[:, -1].double()
    return (last - y).abs().mean().item(), (2 * last - prev - y).abs().mean().item()


# ----------------------------------------------------------------------------------------------------------------
# State on disk


@dataclass
class RunState:
    """What a resumed run needs: next epoch, per-kind models and optimisers, best metrics so far."""

    epoch: int
    models: dict[str, KNOWN]
    opts: dict[str, torch.optim.Optimizer]
    best: dict[str, dict]


def new_state(cfg: MetaTrainCfg, device: torch.device) -> RunState:
    models = {}
    for kind in cfg.kinds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(cfg.seed, f"init/{kind}"))
            models[kind] = KNOWN(window=cfg.window).to(device)
    opts = {k: torch.optim.Adam(m.parameters(), lr=cfg.lr) for k, m in models.items()}
    return RunState(0, models, opts, {})


def save_checkpoint(state: RunState, cfg: MetaTrainCfg, data_key: str, path: Path) -> None:
    blob = {"epoch": state.epoch, "cfg": asdict(cfg), "data_key": data_key, "best": state.best,
            "models": {k: m.state_dict() for k, m in state.models.items()},
            "opts": {k: o.state_dict() for k, o in state.opts.items()}}
    atomic_save(blob, path)


def resume(path: Path, cfg: MetaTrainCfg, data_key: str, device: torch.device) -> RunState:
    """The state in `path` if it exists (and matches this run), else a fresh one."""
    state = new_state(cfg, device)
    if not path.is_file():
        return state
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise KnowError(f"{path} is unreadable ({type(e).__name__}); delete it to start over") from None
    _check_same_run(blob, cfg, data_key, path)
    for kind in cfg.kinds:
        state.models[kind].load_state_dict(blob["models"][kind])
        state.opts[kind].load_state_dict(blob["opts"][kind])
    state.epoch, state.best = blob["epoch"], blob["best"]
    return state


def _check_same_run(blob: dict, cfg: MetaTrainCfg, data_key: str, path: Path) -> None:
    old, new = blob["cfg"], asdict(cfg)
    diff = [k for k in new if k not in RESUMABLE_CHANGES and _norm(old.get(k)) != _norm(new[k])]
    if diff:
        k = diff[0]
        raise KnowError(f"{path} was written with {k}={old.get(k)!r}, this run has {new[k]!r}; "
                        f"use another --out or delete the checkpoint")
    if blob["data_key"] != data_key:
        raise KnowError(f"{path} was written for other trajectories; use another --out or delete the checkpoint")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _write_csv(path: Path, rows: list[dict], keep_until: int | None = None) -> None:
    """Append rows; with keep_until, first drop rows of epochs after it (a resumed run redoes them). The whole file
    is rewritten atomically, so a killed run never leaves a half-written row."""
    old = []
    if path.is_file():
        with open(path, newline="") as f:
            old = [r for r in csv.DictReader(f) if keep_until is None or int(r["epoch"]) <= keep_until]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(old + rows)
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# The run


def meta_train(trajectories: Iterable, cfg: MetaTrainCfg, out_dir: str | os.PathLike,
               route: Route | None = None) -> dict[str, KNOWN]:
    """Meta-train one KNOWN per kind in `cfg.kinds`; returns the best model of each (lowest validation MAE).

    Args:
        trajectories: Trajectory objects or paths (our safetensors format, or official `.mat`), each with
            S >= cfg.window + 1 sessions; paths are loaded one at a time.
        cfg: settings; out_dir: where metrics, checkpoints and the best models go (resumes from it).
        route: trajectory parameter kind -> KNOWN kind (a mapping), or a callable (name, kind, shape) -> kind or
            None; default: `know.predict.route` with cfg.routing, so models learn from the parameters they
            will predict ("official": conv kernels -> conv, other >= 2-D weights -> fc, 1-D biases -> bias).
    """
    out, route = Path(out_dir), prediction_route(cfg.routing) if route is None else route
    if not cfg.kinds:
        raise KnowError("no kinds to train: set --kinds=conv,fc,bias (or a subset)")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    sources = list(trajectories)
    train_src, val_src = split_sources(sources, cfg)
    data_key = _data_key(sources)
    train, n_train = gather_samples(train_src, cfg, route, cfg.max_samples_per_kind, "train")
    val, n_val = gather_samples(val_src, cfg, route, cfg.max_val_samples_per_kind, "val")
    if n_train == 0:
        raise TrajectoryError(f"no training trajectory has window + 1 = {cfg.window + 1} sessions or more; "
                              f"meta-training needs a target after each window (collect longer trajectories "
                              f"or lower --window)")
    empty = [k for k in cfg.kinds if train[k].shape[0] == 0]
    if empty:
        raise TrajectoryError(f"no training samples for kind(s) {', '.join(empty)}; the trajectories have no "
                              f"parameters routed there (drop them with --kinds=...)")
    if n_val == 0:
        print("meta-train: no usable validation trajectory; the best epoch is chosen by train MAE", file=sys.stderr)
    train = {k: v.to(device) for k, v in train.items()}
    val = {k: v.to(device) for k, v in val.items()}
    state = resume(out / "checkpoint.pt", cfg, data_key, device)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))  # after resume() accepted it
    refs = {k: reference_maes(val[k]) for k in cfg.kinds}
    data = _data_meta(train_src, val_src, train, val)
    _write_csv(out / "metrics.csv", [], keep_until=state.epoch)
    _run_epochs(state, cfg, train, val, refs, out, data, data_key)
    summary = {k: state.best.get(k, {}) for k in cfg.kinds}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return {k: load_known(out / f"known_{k}.safetensors") for k in cfg.kinds}


def _run_epochs(state: RunState, cfg: MetaTrainCfg, train: dict, val: dict, refs: dict, out: Path,
                data: dict, data_key: str) -> None:
    from tqdm import tqdm

    per_epoch = sum(math.ceil(train[k].shape[0] / cfg.batch_size) for k in cfg.kinds)
    with tqdm(total=per_epoch * cfg.epochs, initial=per_epoch * min(state.epoch, cfg.epochs), unit="batch",
              desc="meta-train", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for epoch in range(state.epoch, cfg.epochs):
            rows = []
            for kind in cfg.kinds:
                gen = torch.Generator().manual_seed(_seed(cfg.seed, f"shuffle/{kind}/{epoch}"))
                bar.set_description(f"meta-train {kind} epoch {epoch + 1}/{cfg.epochs}")
                train_mae = train_known_epoch(state.models[kind], state.opts[kind], train[kind], cfg, gen, bar)
                row = dict(epoch=epoch + 1, kind=kind, train_mae=train_mae, val_mae=evaluate_known(state.models[kind],
                           val[kind]), val_mae_copy_last=refs[kind][0], val_mae_linear=refs[kind][1])
                _keep_best(state, kind, row, cfg, out, data)
                rows.append(row)
            state.epoch = epoch + 1
            _write_csv(out / "metrics.csv", rows)
            save_checkpoint(state, cfg, data_key, out / "checkpoint.pt")


def _keep_best(state: RunState, kind: str, row: dict, cfg: MetaTrainCfg, out: Path, data: dict) -> None:
    """Save the model when it beats the best validation MAE so far (train MAE when there is no validation)."""
    has_val = not math.isnan(row["val_mae_copy_last"])
    score = row["val_mae"] if has_val else row["train_mae"]
    score = math.inf if math.isnan(score) else score  # a diverged model never counts as best
    best = state.best.get(kind)
    if best is not None and not score < best["score"]:
        return
    state.best[kind] = {**row, "score": score}
    meta = {"kind": kind, "window": cfg.window, "source": "know meta-train", "code_version": _code_version(),
            "training_data": data[kind], "metrics": row, "config": asdict(cfg)}
    model = state.models[kind]
    save_known(model, out / f"known_{kind}.safetensors", meta)


def _data_meta(train_src: list, val_src: list, train: dict, val: dict) -> dict[str, dict]:
    names_t = [_name(s, i) for i, s in enumerate(train_src)]
    names_v = [_name(s, i) for i, s in enumerate(val_src)]
    return {k: {"train_trajectories": names_t[:100], "val_trajectories": names_v[:100],
                "num_train_trajectories": len(names_t), "num_val_trajectories": len(names_v),
                "train_samples": int(train[k].shape[0]), "val_samples": int(val[k].shape[0])} for k in train}


def _data_key(sources: list) -> str:
    """Identifies the input trajectories (names and sizes) so a resume cannot silently mix datasets."""
    ids = []
    for i, s in enumerate(sources):
        if isinstance(s, (str, os.PathLike)):
            ids.append(f"{Path(s).resolve()}:{Path(s).stat().st_size}")
        else:
            ids.append(f"{_name(s, i)}:{s.num_sessions}:{s.num_params}")
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _seed(seed: int, salt: str) -> int:
    """A seed per (run seed, purpose): streams stay independent and do not depend on call order."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{salt}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _code_version() -> str:
    return __version__


# ----------------------------------------------------------------------------------------------------------------
# Command line


def unit_metatrain(cfg: dict, out: Path, deps: dict) -> dict:
    """Our KNOWN, meta-trained on the trajectories of every collector group in `deps`, into `out`."""
    paths = sorted(p for d in deps.values() for p in (d / "trajectories").glob("*.safetensors"))
    models = meta_train(paths, MetaTrainCfg(**cfg["metatrain"]), out)
    return {"trajectories": len(paths), "kinds": sorted(models)}


def expand_sources(patterns: list[str]) -> list[str]:
    """Paths, globs or folders (-> their *.safetensors and *.mat files), sorted so the split is reproducible."""
    paths: list[str] = []
    for pat in patterns:
        if os.path.isdir(pat):
            found = sorted(glob.glob(os.path.join(pat, "*.safetensors")) + glob.glob(os.path.join(pat, "*.mat")))
        else:
            found = sorted(glob.glob(pat))
        if not found:
            raise TrajectoryError(f"no trajectory files match '{pat}'")
        paths += found
    return paths


def main(argv: list[str] | None = None) -> int:
    fields_help = ", ".join(f"--{f.name}={','.join(f.default) if isinstance(f.default, tuple) else f.default}"
                            for f in fields(MetaTrainCfg))
    p = argparse.ArgumentParser(prog="know meta-train", allow_abbrev=False,
                                description="Meta-train KNOWN (conv / fc / bias) on forgetting trajectories.",
                                epilog=f"Settings (override with --key=value): {fields_help}")
    p.add_argument("--trajectories", nargs="+", required=True,
                   help="trajectory files, globs or folders (our .safetensors or the official .mat)")
    p.add_argument("--out", required=True, help="output folder (resumes from its checkpoint.pt)")
    args, rest = p.parse_known_args(argv)
    cfg = override(MetaTrainCfg(), parse_overrides(rest))
    meta_train(expand_sources(args.trajectories), cfg, args.out)
    best = json.loads((Path(args.out) / "summary.json").read_text())
    for kind, b in best.items():
        print(f"{kind}: val_mae {b.get('val_mae'):.4g} (copy-last {b.get('val_mae_copy_last'):.4g}, "
              f"linear {b.get('val_mae_linear'):.4g}) at epoch {b.get('epoch')}")
    return 0
