"""Two-phase transfer learning from upstream weights (docs/method.md §4, the official CIFAR-100 -> CIFAR-10 script).

Load the weights into the upstream architecture, replace the head for the downstream classes, then
  phase 1 ("probe", 10 epochs): conv and dense layers frozen, normalisation layers and the new head trainable,
          Adam 1e-3, batch 128;
  phase 2 ("finetune", 100 epochs): everything trainable, Adam with cosine decay
          lr(e) = 0.5 * 4e-4 * (1 + cos(pi * e / 100)), e = 0 .. 99, batch 128;
with the paper's augmentation and per-pixel mean subtraction. Test accuracy is logged after every epoch; the final
and the best accuracy are both reported (the paper does not say which it reports, §7).

Choices (ours, documented): Keras freezes a Conv/Dense layer as a whole, so phase 1 freezes the biases of conv and
dense layers too; every parameter that is neither normalisation nor head ("other": positional embeddings, class
tokens, layer scales in timm models) is frozen as well. Normalisation layers run in training mode in phase 1
(their running statistics adapt). The new head gets Keras' Dense init (Glorot-uniform kernel, zero bias). Each phase
starts with a fresh optimizer. Input channels and size come from the upstream model; the downstream data is adapted
to them (`know.data.adapt`). Checkpoints (model, optimizer, phase, log) are written atomically after every epoch; a
rerun resumes, with batch order and augmentation seeded per (seed, phase, epoch), so it equals an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from know.config import TransferCfg, override, parse_overrides
from know.data import Augment, ImageSet, get_dataset
from know.device import fast_layout, resolve_device
from know.errors import KnowError
from know.io import atomic_save, atomic_write_text, read_checkpoint, require_writable
from know.models import get_head, replace_head
from know.train import (cpu_state, evaluate, generator, make_optimizer, seed_from, seeded_model, set_lr,
                        train_epoch)
from know.trajectory import Trajectory, param_kinds

PHASES = ("probe", "finetune")




@dataclass
class TransferResult:
    """Outcome of one transfer run. log: one dict per epoch (phase, epoch, lr, train_loss, test_acc)."""

    final_acc: float
    best_acc: float
    best_epoch: dict  # {"phase": ..., "epoch": ...} of the best test accuracy
    log: list[dict]
    wall_time_s: float
    seed: int
    upstream_model: str
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- pieces
def cosine_lr(epoch: int, epochs: int, peak: float) -> float:
    """Phase-2 schedule (§4): 0.5 * peak * (1 + cos(pi * epoch / epochs)), epoch counted from 0."""
    return 0.5 * peak * (1 + math.cos(math.pi * epoch / epochs))


def _head_prefix(model: nn.Module) -> str:
    return get_head(model)[0] + "."


def probe_trainable(model: nn.Module) -> list[str]:
    """Names trainable in phase 1: normalisation parameters and the head's weight and bias."""
    head = _head_prefix(model)
    return [n for n, k in param_kinds(model).items() if k == "norm" or n.startswith(head)]


def set_phase(model: nn.Module, phase: str) -> list[nn.Parameter]:
    """Set requires_grad for `phase` ('probe' or 'finetune'); returns the trainable parameters."""
    trainable = set(probe_trainable(model)) if phase == "probe" else None
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(trainable is None or n in trainable)
        if p.requires_grad:
            params.append(p)
    return params


def upstream_shape(state: dict[str, Tensor], model_kwargs: dict) -> tuple[int, int]:
    """(in_chans, img_size) of the upstream model: from its kwargs, else the first 4-D weight, and 32."""
    in_chans = model_kwargs.get("in_chans")
    if in_chans is None:
        in_chans = next((v.shape[1] for v in state.values() if v.dim() == 4), 3)
    return int(in_chans), int(model_kwargs.get("img_size", 32))


def infer_num_classes(model_name: str, model_kwargs: dict, state: dict[str, Tensor]) -> int:
    """Upstream class count from the head's weight in `state`."""
    in_chans, img_size = upstream_shape(state, model_kwargs)
    kw = {k: v for k, v in model_kwargs.items() if k not in ("in_chans", "img_size")}
    probe = seeded_model(model_name, 0, 10, in_chans, img_size, kw)
    key = get_head(probe)[0] + ".weight"
    if key not in state:
        raise KnowError(f"the checkpoint has no '{key}' (the head of {model_name}); is it the right architecture?")
    return int(state[key].shape[0])


def build_transfer_model(state: dict[str, Tensor], model_name: str, model_kwargs: dict, num_classes: int,
                         downstream_classes: int, seed: int, device) -> nn.Module:
    """Upstream architecture with `state` loaded (strictly), then a fresh Keras-initialised head."""
    in_chans, img_size = upstream_shape(state, model_kwargs)
    kw = {k: v for k, v in model_kwargs.items() if k not in ("in_chans", "img_size")}
    model = seeded_model(model_name, seed_from(seed, "upstream-init"), num_classes, in_chans, img_size, kw)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise KnowError(f"checkpoint does not fit {model_name} {kw}: {str(e).splitlines()[0]}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_from(seed, "head"))
        replace_head(model, downstream_classes)
        head = get_head(model)[1]
        nn.init.xavier_uniform_(head.weight)  # Keras Dense default
        nn.init.zeros_(head.bias)
    return fast_layout(model.to(device))


def load_downstream(cfg: TransferCfg, in_chans: int, img_size: int, seed: int) -> tuple[ImageSet, ImageSet, Tensor]:
    """Train and test splits adapted to the upstream input, and the train indices used."""
    dev = resolve_device(cfg.device)
    kw = dict(root=cfg.data_root, channels=in_chans, size=img_size, device=dev)
    train, test = get_dataset(cfg.dataset, "train", **kw), get_dataset(cfg.dataset, "test", **kw)
    idx = torch.randperm(len(train), generator=generator(seed, cfg.dataset, "downstream"))
    idx = idx[:cfg.max_images] if cfg.max_images else torch.arange(len(train))
    if cfg.eval_images is not None and cfg.eval_images < len(test):
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:cfg.eval_images])
    return train, test, idx


def _schedule(cfg: TransferCfg) -> list[tuple[str, int]]:
    return [("probe", e) for e in range(cfg.probe_epochs)] + [("finetune", e) for e in range(cfg.finetune_epochs)]


def _lr(cfg: TransferCfg, phase: str, epoch: int) -> float:
    return cfg.probe_lr if phase == "probe" else cosine_lr(epoch, cfg.finetune_epochs, cfg.finetune_lr)


def _fingerprint(cfg: TransferCfg, state: dict[str, Tensor], *fields) -> int:
    ident = {k: v for k, v in asdict(cfg).items() if k not in ("device", "data_root", "eval_batch_size")}
    total = f"{sum(float(v.double().sum()) for v in state.values() if v.is_floating_point()):.10g}"
    return seed_from(sorted(ident.items()), total, *fields)


# ---------------------------------------------------------------------------------------------- the run
def run_transfer(cfg: TransferCfg, state_dict: dict[str, Tensor], upstream_model_name: str,
                 upstream_model_kwargs: dict | None = None, upstream_num_classes: int | None = None, seed: int = 0,
                 ckpt_path: str | Path | None = None, progress: bool = True) -> TransferResult:
    """Fine-tune `state_dict` (weights of `upstream_model_name`) on cfg.dataset with the two-phase protocol.

    upstream_model_kwargs: builder kwargs (may hold in_chans / img_size); upstream_num_classes: None = read from
    the head in `state_dict`. seed: head init, batch order, augmentation. ckpt_path: resumable checkpoint file.
    """
    t0 = time.time()
    kwargs = dict(upstream_model_kwargs or {})
    n_up = upstream_num_classes or infer_num_classes(upstream_model_name, kwargs, state_dict)
    in_chans, img_size = upstream_shape(state_dict, kwargs)
    train, test, idx = load_downstream(cfg, in_chans, img_size, seed)
    model = build_transfer_model(state_dict, upstream_model_name, kwargs, n_up, train.num_classes, seed,
                                 train.y.device)
    fp = _fingerprint(cfg, state_dict, upstream_model_name, sorted(kwargs.items()), n_up, seed)
    ckpt = _load_ckpt(ckpt_path, fp)
    log, before = (list(ckpt["log"]), ckpt["wall_time_s"]) if ckpt else ([], 0.0)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    aug = Augment() if cfg.augment else None
    opt, current = None, None
    for phase, epoch in _schedule(cfg)[len(log):]:
        if phase != current:  # a fresh optimizer per phase, restored when resuming inside that phase
            opt = make_optimizer(cfg.optimizer, set_phase(model, phase), _lr(cfg, phase, epoch))
            if ckpt and ckpt["phase"] == phase:
                opt.load_state_dict(ckpt["opt"])
            current = phase
        log.append(_epoch(cfg, model, opt, train, test, idx, phase, epoch, seed, aug, progress))
        if ckpt_path:
            atomic_save({"fingerprint": fp, "model": cpu_state(model), "opt": opt.state_dict(), "phase": phase,
                         "log": log, "wall_time_s": before + time.time() - t0}, ckpt_path)
    return _result(cfg, log, before + time.time() - t0, seed, upstream_model_name)


def _epoch(cfg, model, opt, train, test, idx, phase, epoch, seed, aug, progress) -> dict:
    lr = _lr(cfg, phase, epoch)
    set_lr(opt, lr)
    total = cfg.probe_epochs if phase == "probe" else cfg.finetune_epochs
    desc = f"{phase} epoch {epoch + 1}/{total}" if progress else None
    loss = train_epoch(model, train, idx, opt, cfg.batch_size, generator(seed, "transfer", phase, epoch), aug, desc)
    return {"phase": phase, "epoch": epoch, "lr": lr, "train_loss": loss,
            "test_acc": evaluate(model, test, cfg.eval_batch_size)}


def _load_ckpt(path, fp: int) -> dict | None:
    ckpt = read_checkpoint(path)
    if ckpt is None:
        return None
    if ckpt.get("fingerprint") != fp:
        raise KnowError(f"{path} belongs to another transfer run (config, weights or seed differ); remove it")
    return ckpt


def _result(cfg: TransferCfg, log: list[dict], wall: float, seed: int, upstream: str) -> TransferResult:
    if not log:
        raise KnowError("no epochs to run: probe_epochs + finetune_epochs is 0")
    best = max(range(len(log)), key=lambda i: log[i]["test_acc"])  # first best on ties
    return TransferResult(final_acc=log[-1]["test_acc"], best_acc=log[best]["test_acc"],
                          best_epoch={"phase": log[best]["phase"], "epoch": log[best]["epoch"]}, log=log,
                          wall_time_s=wall, seed=seed, upstream_model=upstream, config=asdict(cfg))


# ---------------------------------------------------------------------------------------------- unit function
def unit_transfer(cfg: dict, out: Path, deps: dict) -> dict:
    """One fine-tune run from deps["weights"] (Θ0 for step 0, else the prediction of that step); resumable."""
    step = cfg["step"]
    weights = deps["weights"] / ("theta0.pt" if step == 0 else f"step{step}.pt")
    state = torch.load(weights, map_location="cpu")
    up = cfg["upstream"]
    result = run_transfer(TransferCfg(**cfg["transfer"]), state, up["model"], up["model_kwargs"], seed=cfg["seed"],
                          ckpt_path=out / "checkpoint.pt", progress=False)
    return {"final_acc": result.final_acc, "best_acc": result.best_acc, "log": result.log}


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
    p = argparse.ArgumentParser(prog="know transfer", description="Two-phase transfer learning from a checkpoint.",
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
    for key, meta_key in (("in_chans", "in_chans"), ("img_size", "img_size")):
        if meta_key in meta:
            kwargs.setdefault(key, meta[meta_key])
    res = run_transfer(cfg, state, model, kwargs, args.upstream_classes, args.seed, args.ckpt)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(res.to_dict(), indent=1))
    print(f"transfer {model} -> {cfg.dataset}: final acc {res.final_acc:.4f}, best {res.best_acc:.4f} "
          f"({res.best_epoch['phase']} epoch {res.best_epoch['epoch']}), {res.wall_time_s:.1f} s")
    return 0
