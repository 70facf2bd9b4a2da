"""The interface every downstream task implements, and the one training loop that runs them all (`fit`).

A task (`Task`) owns its data (train / val / test `ImageSet`s), how upstream weights become its model (a new head,
an encoder under a decoder ...), its phases (which parameters train, with which optimizer and learning-rate
schedule), one training epoch, and its metrics (`metric`: the one a table reports, higher is better). `fit` runs the
phases epoch by epoch with a checkpoint after each (a rerun resumes and equals an uninterrupted run), evaluates val
(when there is one) and test after every epoch, and reports the last epoch and the epoch with the best validation
metric; `early_stop` ends a phase after that many epochs without a better validation metric (Keras' EarlyStopping,
without its restore: the best epoch is what `select="best_val"` reports). The test split never chooses anything.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from know.config import TransferCfg
from know.data import ImageSet
from know.device import compiled
from know.errors import KnowError
from know.io import atomic_save, read_checkpoint
from know.train import cpu_state, make_optimizer, seed_from, set_lr

SELECTIONS = ("last", "best_val")


@dataclass
class Phase:
    """A stretch of training with one optimizer: `trainable(model)` names what trains, `lr(epoch)` the schedule."""

    name: str
    epochs: int
    optimizer: str
    lr: Callable[[int], float]  # epoch within the phase (from 0) -> learning rate
    trainable: Callable[[nn.Module], set[str]] | None = None  # parameter names; None: all
    weight_decay: float = 0.0


class Task:
    """Base of the downstream tasks (see the module docstring). Subclasses set `metric` and implement the rest."""

    metric: str = "acc"

    def __init__(self, cfg: TransferCfg, seed: int):
        self.cfg, self.seed = cfg, seed

    # -- what a task provides
    def load(self, upstream: dict) -> tuple[ImageSet, ImageSet | None, ImageSet]:
        """(train, val or None, test) on the run's device, adapted to the upstream model's input."""
        raise NotImplementedError

    def build(self, state: dict[str, torch.Tensor], upstream: dict, data: ImageSet) -> nn.Module:
        """The downstream model holding the upstream weights `state`, on `data`'s device."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def train_epoch(self, model: nn.Module, opt: torch.optim.Optimizer, data: ImageSet, gen: torch.Generator,
                    max_steps: int | None) -> tuple[float, int]:
        """One epoch (at most `max_steps` steps); returns (mean train loss, steps taken)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: ImageSet, max_batches: int | None) -> dict[str, float]:
        """Metrics of `model` on `data`, `self.metric` among them."""
        raise NotImplementedError

    def fingerprint(self) -> tuple:
        """What else identifies a run besides the config, weights and seed (a resume refuses another run's file)."""
        return ()


def fit(task: Task, state: dict[str, torch.Tensor], upstream: dict, ckpt_path: str | Path | None = None,
        progress: bool = False) -> dict:
    """Train `task` from the upstream weights `state`; returns {"final", "selected", "selected_epoch", "log",
    "wall_time_s"} (final: test metrics of the last epoch; selected: of the epoch `cfg.select` picks)."""
    cfg = task.cfg
    if cfg.select not in SELECTIONS:
        raise KnowError(f"unknown --transfer.select={cfg.select}; choices: {', '.join(SELECTIONS)}")
    t0 = time.time()
    train, val, test = task.load(upstream)
    if cfg.select == "best_val" and val is None:
        raise KnowError("--transfer.select=best_val needs a validation split: set --transfer.val_images (or a task "
                        "with its own, e.g. domain_generalization)")
    model = task.build(state, upstream, train)
    net = compiled(model, cfg.compile)  # trains and evaluates; `model` (the same parameters) is what is saved
    fp = seed_from(sorted((k, v) for k, v in vars(cfg).items() if k not in ("device", "data_root", "eval_batch_size")),
                   _checksum(state), sorted(upstream.items()), task.seed, *task.fingerprint())
    ckpt = _resume(ckpt_path, fp)
    log, completed, before = (list(ckpt["log"]), list(ckpt["completed"]), ckpt["wall_time_s"]) if ckpt else \
        ([], [], 0.0)
    if ckpt:
        model.load_state_dict(ckpt["model"])

    def save(opt, phase: str) -> None:
        if ckpt_path:
            atomic_save({"fingerprint": fp, "model": cpu_state(model), "opt": opt.state_dict(), "phase": phase,
                         "log": log, "completed": completed, "wall_time_s": before + time.time() - t0}, ckpt_path)

    for phase in task.phases():
        if phase.epochs <= 0 or phase.name in completed:
            continue
        rows = [r for r in log if r["phase"] == phase.name]  # epochs of this phase done before a resume
        opt = make_optimizer(phase.optimizer, _trainable(model, phase), phase.lr(0), phase.weight_decay)
        if rows:
            opt.load_state_dict(ckpt["opt"])
        budget = None if cfg.limit_steps is None else cfg.limit_steps - sum(r["steps"] for r in rows)
        vals = [r[f"val_{task.metric}"] for r in rows if f"val_{task.metric}" in r]
        for epoch in range(len(rows), phase.epochs):
            if (budget is not None and budget <= 0) or (cfg.early_stop and _stale(vals) >= cfg.early_stop):
                break
            lr = phase.lr(epoch)
            set_lr(opt, lr)
            gen = torch.Generator().manual_seed(seed_from(task.seed, "transfer", phase.name, epoch))
            loss, steps = task.train_epoch(net, opt, train, gen, budget)
            budget = None if budget is None else budget - steps
            row = {"phase": phase.name, "epoch": epoch, "lr": lr, "train_loss": loss, "steps": steps,
                   **{f"test_{k}": v for k, v in task.evaluate(net, test, cfg.limit_steps).items()}}
            if val is not None:
                row.update({f"val_{k}": v for k, v in task.evaluate(net, val, cfg.limit_steps).items()})
                vals.append(row[f"val_{task.metric}"])
            log.append(row)
            if progress:
                print(f"[{task.__class__.__name__}] {phase.name} {epoch + 1}/{phase.epochs}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
            save(opt, phase.name)
        completed.append(phase.name)
        save(opt, phase.name)
    return summarize(log, task.metric, cfg.select, before + time.time() - t0)


def _stale(vals: list[float]) -> int:
    """Epochs since the best validation metric (0 when the last one is the best)."""
    return len(vals) - 1 - max(range(len(vals)), key=lambda i: (vals[i], -i)) if vals else 0


def summarize(log: list[dict], metric: str, select: str, wall: float) -> dict:
    """The run's result from its per-epoch log (see `fit`)."""
    if not log:
        raise KnowError("no epochs to run: every phase has 0 epochs")
    test = lambda row: {k.removeprefix("test_"): v for k, v in row.items() if k.startswith("test_")}  # noqa: E731
    pick = len(log) - 1
    if select == "best_val":  # the first epoch with the best validation metric
        pick = max(range(len(log)), key=lambda i: (log[i][f"val_{metric}"], -i))
    return {"final": test(log[-1]), "selected": test(log[pick]), "selected_epoch": pick, "log": log,
            "wall_time_s": wall}


def _trainable(model: nn.Module, phase: Phase) -> list[nn.Parameter]:
    """Set requires_grad for `phase`; returns the parameters that train."""
    names = phase.trainable(model) if phase.trainable else None
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(names is None or n in names)
        if p.requires_grad:
            params.append(p)
    return params


def _checksum(state: dict[str, torch.Tensor]) -> str:
    return f"{sum(float(v.double().sum()) for v in state.values() if v.is_floating_point()):.10g}"


def _resume(path, fp: int) -> dict | None:
    ckpt = read_checkpoint(path)
    if ckpt is None:
        return None
    if ckpt.get("fingerprint") != fp:
        raise KnowError(f"{path} belongs to another transfer run (config, weights or seed differ); remove it")
    return ckpt


def cosine(epoch: int, epochs: int, peak: float, floor: float = 0.0) -> float:
    """floor + 0.5 (peak - floor) (1 + cos(pi epoch / epochs)), epoch counted from 0 (docs/method.md §4)."""
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * epoch / epochs))


def finetune_lr(cfg: TransferCfg) -> Callable[[int], float]:
    """The fine-tune phase's schedule: "cosine" (§4); "warmup_flat_cosine" (linear warm-up over warmup_epochs,
    flat_epochs at the peak, then cosine down to min_lr over the rest: the authors' PVTv2 recipe); "warmup_constant"
    (linear warm-up over warmup_epochs, then constant: the Keras captioning example's schedule, per epoch)."""
    if cfg.schedule == "cosine":
        return lambda e: cosine(e, cfg.finetune_epochs, cfg.finetune_lr, cfg.min_lr)
    if cfg.schedule == "warmup_flat_cosine":
        decay = max(1, cfg.finetune_epochs - cfg.warmup_epochs - cfg.flat_epochs)

        def lr(e: int) -> float:
            if e < cfg.warmup_epochs:
                return cfg.finetune_lr * (e + 1) / cfg.warmup_epochs
            if e < cfg.warmup_epochs + cfg.flat_epochs:
                return cfg.finetune_lr
            return cosine(e - cfg.warmup_epochs - cfg.flat_epochs, decay, cfg.finetune_lr, cfg.min_lr)
        return lr
    if cfg.schedule == "warmup_constant":
        return lambda e: cfg.finetune_lr * min(1.0, (e + 1) / max(1, cfg.warmup_epochs))
    raise KnowError(f"unknown --transfer.schedule={cfg.schedule}; choices: cosine, warmup_flat_cosine, "
                    "warmup_constant")
