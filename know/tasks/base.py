"""The interface every downstream task implements, and the one training loop that runs them all (`fit`).

A task (`Task`) owns its data (train / val / test `ImageSet`s), how upstream weights become its model (a new head,
an encoder under a decoder ...), its phases (which parameters train, with which optimizer and learning-rate
schedule), one training epoch, and its metrics (`metric`: the one a table reports, higher is better). `fit` runs the
phases epoch by epoch with a checkpoint after each (a rerun resumes and equals an uninterrupted run), evaluates val
(when there is one) after every epoch, and reports the test metrics of the last epoch and of the epoch with the best
validation metric (its weights kept in memory and in the checkpoint): the test split is evaluated for the reported
numbers only (every epoch with `test_each_epoch`, for learning curves); `early_stop` ends a phase after that many epochs without a better validation metric (Keras' EarlyStopping,
without its restore: the best epoch is what `select="best_val"` reports). The test split never chooses anything.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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


def upstream_spec(state: dict[str, torch.Tensor], model_kwargs: dict) -> tuple[int, int, str]:
    """(in_chans, img_size, norm) of the upstream model: from its kwargs, else the first 4-D weight, 32, pixel_mean."""
    in_chans = model_kwargs.get("in_chans")
    if in_chans is None:
        in_chans = next((v.shape[1] for v in state.values() if v.dim() == 4), 3)
    return int(in_chans), int(model_kwargs.get("img_size", 32)), model_kwargs.get("norm", "pixel_mean")



@dataclass
class TransferResult:
    """Outcome of one transfer run: test metrics of the last epoch (`final`) and of the selected one (`selected`,
    `selected_epoch` an index into `log`), and the per-epoch log (phase, epoch, lr, train_loss, test_* and val_*)."""

    metric: str
    final: dict
    selected: dict
    selected_epoch: int
    log: list[dict]
    wall_time_s: float
    seed: int
    upstream_model: str
    config: dict = field(default_factory=dict)

    @property
    def final_acc(self) -> float:
        return self.final[self.metric]

    def to_dict(self) -> dict:
        return asdict(self)


def upstream_info(state: dict[str, torch.Tensor], model_name: str, model_kwargs: dict | None,
                  num_classes: int | None = None) -> dict:
    """What travels with the upstream weights: architecture, builder kwargs, input channels, size and
    normalisation (so the downstream data is adapted to the model, not the other way round)."""
    kwargs = dict(model_kwargs or {})
    in_chans, img_size, norm = upstream_spec(state, kwargs)
    return {"model": model_name, "model_kwargs": kwargs, "in_chans": in_chans, "img_size": img_size, "norm": norm,
            "num_classes": num_classes}


def run_task(task_cls: type[Task], cfg: TransferCfg, state_dict: dict[str, torch.Tensor], upstream_model_name: str,
             upstream_model_kwargs: dict | None = None, upstream_num_classes: int | None = None, seed: int = 0,
             ckpt_path: str | Path | None = None, progress: bool = True) -> TransferResult:
    """Fine-tune `state_dict` (weights of `upstream_model_name`) with `task_cls` on cfg.dataset (see
    `know.transfer.run_transfer`, which picks the class by cfg.task)."""
    upstream = upstream_info(state_dict, upstream_model_name, upstream_model_kwargs, upstream_num_classes)
    task = task_cls(cfg, seed)
    out = fit(task, state_dict, upstream, ckpt_path, progress)
    return TransferResult(task.metric, out["final"], out["selected"], out["selected_epoch"], out["log"],
                          out["wall_time_s"], seed, upstream_model_name, asdict(cfg))



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
    best = ckpt.get("best") if ckpt else None  # the weights of the best validation epoch so far (select=best_val)
    if ckpt:
        model.load_state_dict(ckpt["model"])

    def save(opt, phase: str) -> None:
        if ckpt_path:
            atomic_save({"fingerprint": fp, "model": cpu_state(model), "opt": opt.state_dict(), "phase": phase,
                         "log": log, "completed": completed, "best": best,
                         "wall_time_s": before + time.time() - t0}, ckpt_path)

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
            row = {"phase": phase.name, "epoch": epoch, "lr": lr, "train_loss": loss, "steps": steps}
            if cfg.test_each_epoch:
                row.update({f"test_{k}": v for k, v in task.evaluate(net, test, cfg.limit_steps).items()})
            if val is not None:
                row.update({f"val_{k}": v for k, v in task.evaluate(net, val, cfg.limit_steps).items()})
                if cfg.select == "best_val" and all(row[f"val_{task.metric}"] > r[f"val_{task.metric}"] for r in log):
                    best = {"epoch": len(log), "state": cpu_state(model)}
                vals.append(row[f"val_{task.metric}"])
            log.append(row)
            if progress:
                print(f"[{task.__class__.__name__}] {phase.name} {epoch + 1}/{phase.epochs}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
            save(opt, phase.name)
        completed.append(phase.name)
        save(opt, phase.name)
    if not log:
        raise KnowError("no epochs to run: every phase has 0 epochs")
    final = task.evaluate(net, test, cfg.limit_steps)  # the test split: touched for the reported numbers only
    pick, selected = len(log) - 1, final
    if cfg.select == "best_val" and best is not None and best["epoch"] != len(log) - 1:
        model.load_state_dict(best["state"])
        pick, selected = best["epoch"], task.evaluate(net, test, cfg.limit_steps)
    return {"final": final, "selected": selected, "selected_epoch": pick, "log": log,
            "wall_time_s": before + time.time() - t0}


def _stale(vals: list[float]) -> int:
    """Epochs since the best validation metric (0 when the last one is the best)."""
    return len(vals) - 1 - max(range(len(vals)), key=lambda i: (vals[i], -i)) if vals else 0


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


def transfer_unit(task_cls: type[Task], cfg: dict, out: Path, deps: dict) -> dict:
    """A task module's `unit_transfer`: one fine-tune run from deps["weights"] (Θ0 for step 0, else the prediction
    of that step), resumable from out/checkpoint.pt."""
    step = cfg["step"]
    weights = deps["weights"] / ("theta0.pt" if step == 0 else f"step{step}.pt")
    state = torch.load(weights, map_location="cpu")
    up = cfg["upstream"]
    result = run_task(task_cls, TransferCfg(**cfg["transfer"]), state, up["model"], up["model_kwargs"],
                      seed=cfg["seed"], ckpt_path=out / "checkpoint.pt", progress=False)
    return {"metric": result.metric, "final": result.final, "selected": result.selected,
            "selected_epoch": result.selected_epoch, "log": result.log}
