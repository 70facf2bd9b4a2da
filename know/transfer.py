"""Transfer learning from upstream weights: any task of `know.tasks` through the one training loop (`fit`).

`run_transfer(cfg, state, model, kwargs, seed=...)` resolves what travels with the upstream weights (architecture,
input channels, size and normalisation), builds the task named by `cfg.task` (classification by default: the paper's
two-phase protocol, docs/method.md §4), trains it with a checkpoint after every epoch (a rerun resumes and equals an
uninterrupted run) and returns the test metrics of the last epoch and of the epoch `cfg.select` picks.
`know transfer` is the command line; a table's cached fine-tune run is its task module's `unit_transfer`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from know.config import TransferCfg, override, parse_overrides
from know.errors import KnowError
from know.io import atomic_write_text, require_writable
from know.tasks import task_class
from know.tasks.base import TransferResult, run_task
from know.trajectory import Trajectory


def run_transfer(cfg: TransferCfg, state_dict: dict[str, Tensor], upstream_model_name: str,
                 upstream_model_kwargs: dict | None = None, upstream_num_classes: int | None = None, seed: int = 0,
                 ckpt_path: str | Path | None = None, progress: bool = True) -> TransferResult:
    """Fine-tune `state_dict` (weights of `upstream_model_name`) on cfg.dataset with the task cfg.task.

    upstream_model_kwargs: builder kwargs (may hold in_chans / img_size / norm); upstream_num_classes: None = read
    from the head in `state_dict`. seed: the trial (head init, batch order, augmentation). ckpt_path: resumable.
    """
    return run_task(task_class(cfg.task), cfg, state_dict, upstream_model_name, upstream_model_kwargs,
                    upstream_num_classes, seed, ckpt_path, progress)


# ---------------------------------------------------------------------------------------------- CLI
def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Weights and what the file says about them: a trajectory (.safetensors, Θ0 and its meta) or a torch file
    holding a state_dict (or a dict with 'state' / 'model' / 'state_dict')."""
    path = Path(path)
    if not path.is_file():
        raise KnowError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        traj = Trajectory.load(path)
        return {k: v.clone() for k, v in traj.theta(0).items()}, traj.meta
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key], {k: v for k, v in obj.items() if k != key and isinstance(v, (str, int, float, dict))}
    return obj, {}


def main(argv: list[str]) -> int:
    """`know transfer --checkpoint X.pt --model simplenet --dataset mnist10k [--key=value ...]`."""
    p = argparse.ArgumentParser(prog="know transfer", description="Transfer learning from a checkpoint (the task "
                                "of --task: classification by default, the paper's two phases).",
                                allow_abbrev=False, epilog="Any TransferCfg field can be set with --key=value.")
    p.add_argument("--checkpoint", required=True, help="state_dict (.pt) or trajectory (.safetensors: uses Θ0)")
    p.add_argument("--model", default=None, help="upstream architecture (default: the trajectory's)")
    p.add_argument("--model-kwargs", default=None, help="JSON builder kwargs, e.g. '{\"width\": 0.25}'")
    p.add_argument("--upstream-classes", type=int, default=None, help="default: read from the head's weight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default=None, help="resumable checkpoint file")
    p.add_argument("--out", default=None, help="write the result (with the per-epoch log) as JSON here")
    args, rest = p.parse_known_args(argv)
    cfg = override(TransferCfg(), parse_overrides(rest))
    if args.out:
        require_writable(Path(args.out).parent, "output folder", "pass another --out")
    state, meta = load_checkpoint(args.checkpoint)
    model = args.model or meta.get("architecture")
    if not model:
        raise KnowError("--model is required for a plain state_dict checkpoint")
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else dict(meta.get("model_kwargs") or {})
    for key in ("in_chans", "img_size", "norm"):
        if key in meta:
            kwargs.setdefault(key, meta[key])
    res = run_transfer(cfg, state, model, kwargs, args.upstream_classes, args.seed, args.ckpt)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(res.to_dict(), indent=1))
    sel = res.log[res.selected_epoch]
    print(f"transfer {model} -> {cfg.dataset} ({cfg.task}): final {res.metric} {res.final[res.metric]:.4f}, "
          f"selected ({cfg.select}: {sel['phase']} epoch {sel['epoch']}) {res.selected[res.metric]:.4f}, "
          f"{res.wall_time_s:.1f} s")
    return 0
