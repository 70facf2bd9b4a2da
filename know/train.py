"""Training one model: seeds, optimizers, an epoch of supervised training, evaluation, weight distances.

- seeds hashed from the fields that identify a run (`seed_from`), seeded model init and per-epoch generators,
- one epoch of supervised training over an index set of a device-resident `ImageSet` (`train_epoch`), `evaluate`,
- Keras-default Adam (the paper's code is Keras) and SGD by name.
K models trained as one live in `know.stack`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from know.data import ImageSet, batches
from know.device import autocast
from know.errors import UnknownName
from know.models import create_model

# Keras' Adam epsilon (the paper's code is Keras); PyTorch's default is 1e-8.
KERAS_ADAM_EPS = 1e-7
ADAM_BETAS = (0.9, 0.999)  # Keras and PyTorch defaults


# ---------------------------------------------------------------------------------------------- seeds
def seed_from(*fields) -> int:
    """A 31-bit seed hashed from the fields that identify a run (style habit 12), stable across processes."""
    text = json.dumps([str(f) if not isinstance(f, (int, float, str, bool, type(None))) else f for f in fields])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def generator(*fields) -> torch.Generator:
    """A CPU generator seeded by `seed_from(*fields)`; one per (run, session, epoch) makes resuming exact."""
    return torch.Generator().manual_seed(seed_from(*fields))


def seeded_model(name: str, seed: int, num_classes: int, in_chans: int, img_size: int = 32,
                 model_kwargs: dict | None = None) -> nn.Module:
    """`create_model` with its random init drawn from `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                            **(model_kwargs or {}))


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached, contiguous CPU copy of the state_dict (unwrapped, so it loads into a fresh model)."""
    return {k: contiguous_cpu(v) for k, v in model.state_dict().items()}


def contiguous_cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------- optimizers
def _adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=KERAS_ADAM_EPS, weight_decay=weight_decay)


def _sgd(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)  # momentum: the PVTv2 recipe


OPTIMIZERS = {"adam": _adam, "sgd": _sgd}


def make_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Optimizer by name ('adam' = Keras-default Adam, the paper's; 'sgd' = SGD with momentum 0.9); weight decay as
    an L2 term (both Keras' and torch's meaning for these two)."""
    if name not in OPTIMIZERS:
        raise UnknownName(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------- one model
def progress(total: int, desc: str | None):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=None if desc else True)


def train_epoch(model: nn.Module, data: ImageSet, idx: Tensor, opt: torch.optim.Optimizer, batch_size: int,
                gen: torch.Generator, augment=None, desc: str | None = None,
                loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy, max_steps: int | None = None,
                amp: bool = False, drop_last: bool = False, clipnorm: float | None = None) -> float:
    """One epoch over `data[idx]` (shuffled by `gen`, the last partial batch kept like Keras `fit` unless
    `drop_last`); the mean train loss.

    `gen` draws the batch order first, then each batch's augmentation, in that order (`train_epoch_stacked`
    reproduces exactly this sequence per member). `augment.apply(x, y, gen) -> (x, y)` transforms a batch: images
    only (`know.data.Augment`) or image and mask together (segmentation's flip). `loss_fn(outputs, targets)`:
    cross-entropy by default. Dropout and anything else drawing from the global RNG is seeded from `gen`'s seed
    (without consuming `gen`) and the global RNG restored afterwards, so an epoch is a function of its generator and
    a resumed run equals an uninterrupted one. `max_steps` stops early (rehearsals); `amp`: bf16 autocast on CUDA;
    `clipnorm` clips each gradient tensor's norm (Keras' clipnorm, per tensor).
    """
    model.train()
    dev = data.x.device
    idx = idx.to(dev)
    total, seen = torch.zeros((), device=dev), 0
    steps = epoch_steps(len(idx), batch_size, drop_last, max_steps)
    with progress(steps, desc) as bar, torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed_from(gen.initial_seed(), "dropout"))
        for step, b in enumerate(batches(len(idx), batch_size, gen, drop_last=drop_last, device=dev)):
            if step == steps:
                break
            x, y = data.take(idx[b])
            if augment is not None:
                x, y = augment.apply(x, y, gen)
            with autocast(dev, amp):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clipnorm is not None:
                for p in model.parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, clipnorm)
            opt.step()
            total += loss.detach().float() * len(b)  # summed on the device: no sync per step
            seen += len(b)
            bar.update()
    return float(total) / max(1, seen)


def epoch_steps(n: int, batch_size: int, drop_last: bool = False, max_steps: int | None = None) -> int:
    """Optimizer steps of one epoch over n images."""
    steps = n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)
    return steps if max_steps is None else min(steps, max_steps)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 1024, max_batches: int | None = None,
             amp: bool = False) -> float:
    """Top-1 accuracy in [0, 1] in eval mode (over the first `max_batches` batches when set); restores the model's
    previous mode."""
    was_training = model.training
    model.eval()
    correct, seen = torch.zeros((), device=data.x.device, dtype=torch.long), 0
    for i, start in enumerate(range(0, len(data), batch_size)):
        if max_batches is not None and i == max_batches:
            break
        x, y = data.take(slice(start, start + batch_size))
        with autocast(x.device, amp):
            correct += (model(x).argmax(1) == y).sum()
        seen += len(y)
    model.train(was_training)
    return float(correct) / max(1, seen)


def weight_distance(a: dict[str, Tensor], b: dict[str, Tensor], names: Iterable[str]) -> float:
    """‖a − b‖₂ over the named tensors, as one flat vector."""
    sq = sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names)
    return sq ** 0.5
