"""Training primitives shared by forgetting, the meta-dataset collector and transfer.

- seeds hashed from the fields that identify a run (`seed_from`), seeded model init and per-epoch generators,
- one epoch of supervised training over an index set of a device-resident `ImageSet` (`train_epoch`), `evaluate`,
- **stacked training**: K copies of one architecture with different weights / learning rates / data orders trained
  in one pass (`Stack`: grouped convolutions, or `torch.func.functional_call` + `torch.vmap`; `StackedAdam`,
  `train_epoch_stacked`, `evaluate_stacked`). Every member sees exactly the batches and augmentations its own
  generator would give the one-at-a-time `train_epoch`, so both agree to float rounding (Adam's normalisation
  amplifies rounding in near-zero gradients, so long runs at large lr drift apart by small amounts),
- `--key=value` overrides of a config dataclass (type-checked, unknown keys rejected), atomic `torch.save`.
"""
from __future__ import annotations

import copy
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from know.data import Augment, ImageSet, batches
from know.jobs import atomic_save  # noqa: F401  (re-exported for forgetting/transfer)
from know.errors import UnknownName

# Keras' Adam epsilon (the paper's code is Keras); PyTorch's default is 1e-8.
KERAS_ADAM_EPS = 1e-7
ADAM_BETAS = (0.9, 0.999)  # Keras and PyTorch defaults



# ---------------------------------------------------------------------------------------------- seeds and devices
def seed_from(*fields) -> int:
    """A 31-bit seed hashed from the fields that identify a run (style habit 12), stable across processes."""
    text = json.dumps([str(f) if not isinstance(f, (int, float, str, bool, type(None))) else f for f in fields])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def generator(*fields) -> torch.Generator:
    """A CPU generator seeded by `seed_from(*fields)`; one per (run, session, epoch) makes resuming exact."""
    return torch.Generator().manual_seed(seed_from(*fields))


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seeded_model(name: str, seed: int, num_classes: int, in_chans: int, img_size: int = 32,
                 model_kwargs: dict | None = None) -> nn.Module:
    """`create_model` with its random init drawn from `seed`, leaving the global RNG untouched."""
    from know.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                            **(model_kwargs or {}))


def fast_layout(model: nn.Module) -> nn.Module:
    """Channels-last weights on the CPU (oneDNN's native layout): a speed choice only, same results to rounding.
    Measured on the 2-core test machine: simplenet steps 1.7x faster, resnet18_know (width 0.25) 1.25x."""
    if next(model.parameters()).device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached, contiguous CPU copy of the state_dict (unwrapped, so it loads into a fresh model)."""
    return {k: _contiguous_cpu(v) for k, v in model.state_dict().items()}


def _contiguous_cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------- optimizers
def _adam(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=KERAS_ADAM_EPS)


def _sgd(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)  # our choice of momentum; the paper uses Adam throughout


OPTIMIZERS = {"adam": _adam, "sgd": _sgd}


def make_optimizer(name: str, params: Iterable, lr: float) -> torch.optim.Optimizer:
    """Optimizer by name ('adam' = Keras-default Adam, the paper's; 'sgd' = SGD with momentum 0.9)."""
    if name not in OPTIMIZERS:
        raise UnknownName(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------- one model
def _progress(total: int, desc: str | None):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=None if desc else True)


def train_epoch(model: nn.Module, data: ImageSet, idx: Tensor, opt: torch.optim.Optimizer, batch_size: int,
                gen: torch.Generator, augment: Augment | None = None, desc: str | None = None) -> float:
    """One epoch over `data[idx]` (shuffled by `gen`, last partial batch kept, like Keras `fit`); mean train loss.

    `gen` draws the batch order first, then each batch's augmentation, in that order: `train_epoch_stacked`
    reproduces exactly this sequence per member.
    """
    model.train()
    idx = idx.to(data.y.device)
    total = torch.zeros((), device=data.y.device)
    with _progress(-(-len(idx) // batch_size), desc) as bar:
        for b in batches(len(idx), batch_size, gen, device=data.y.device):
            sel = idx[b]
            x = augment(data.x[sel], gen) if augment is not None else data.x[sel]
            loss = F.cross_entropy(model(x), data.y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(sel)  # summed on the device: no sync per step
            bar.update()
    return float(total) / len(idx)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] in eval mode; restores the model's previous mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=data.y.device, dtype=torch.long)
    for start in range(0, len(data), batch_size):
        correct += (model(data.x[start:start + batch_size]).argmax(1) == data.y[start:start + batch_size]).sum()
    model.train(was_training)
    return float(correct) / max(1, len(data))


def weight_distance(a: dict[str, Tensor], b: dict[str, Tensor], names: Iterable[str]) -> float:
    """‖a − b‖₂ over the named tensors, as one flat vector."""
    sq = sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names)
    return sq ** 0.5


# ---------------------------------------------------------------------------------------------- stacked models
def stackable(model: nn.Module) -> bool:
    """Whether `model` can be trained stacked: no buffers (BatchNorm running statistics would be updated in
    place, which neither backend batches) and no dropout (its randomness would differ from one-at-a-time)."""
    no_dropout = not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    return not list(model.buffers()) and no_dropout


def stack_states(states: list[dict[str, Tensor]], names: Iterable[str], device=None) -> dict[str, Tensor]:
    """K state_dicts -> {name: (K, *shape)} for the named tensors."""
    return {n: torch.stack([s[n] for s in states]).to(device).detach().clone() for n in names}


class _WideConv(nn.Module):
    """K Conv2d's with equal shapes as one grouped convolution on (B, K*C_in, H, W) -> (B, K*C_out, H', W')."""

    def __init__(self, conv: nn.Conv2d, k: int):
        super().__init__()
        self.k, self.stride, self.padding, self.dilation, self.groups = k, conv.stride, conv.padding, \
            conv.dilation, conv.groups
        self.weight = nn.Parameter(conv.weight.detach().repeat(k, 1, 1, 1))  # (K*C_out, C_in/groups, kh, kw)
        self.bias = nn.Parameter(conv.bias.detach().repeat(k)) if conv.bias is not None else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups * self.k)


class _WideLinear(nn.Module):
    """K Linear's with equal shapes as one batched matmul: (B, K*in) or (B, K, in) -> (B, K, out)."""

    def __init__(self, linear: nn.Linear, k: int):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(linear.weight.detach().repeat(k, 1, 1))  # (K, out, in)
        self.bias = nn.Parameter(linear.bias.detach().repeat(k, 1)) if linear.bias is not None else None

    def forward(self, x):
        x = x.reshape(x.shape[0], self.k, -1).transpose(0, 1)  # (K, B, in)
        out = torch.bmm(x, self.weight.transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.transpose(0, 1)  # (B, K, out)


def _widened(template: nn.Module, k: int) -> nn.Module:
    """A copy of `template` with every Conv2d / Linear replaced by its K-wide twin."""
    wide = copy.deepcopy(template)
    for parent in list(wide.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.padding_mode == "zeros":
                setattr(parent, name, _WideConv(child, k))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, _WideLinear(child, k))
    return wide


BACKENDS = ("auto", "lanes", "wide", "vmap")


class Stack:
    """K models of one architecture with their own weights, trained as one.

    Backends: "lanes" keeps member k in SIMD lane k and runs hand-written C kernels (`know.lanes`: SimpleNets, CPU,
    K <= 16, needs a C compiler; the fastest on CPU); "wide" turns every Conv2d into a grouped convolution and every
    Linear into a batched matmul, so the template's own forward runs on (B, K*C, H, W) inputs (valid for nets whose
    other ops act per channel); "vmap" runs `torch.func.functional_call` under `torch.vmap` (any buffer-free
    model). "auto" takes the first of lanes, wide, vmap that applies; lanes and wide are checked numerically
    against vmap at construction.
    `params` are {name: (K, *shape)} views of the trained tensors: update them in place.
    """

    def __init__(self, template: nn.Module, states: list[dict[str, Tensor]], example: Tensor,
                 backend: str = "auto"):
        if not stackable(template):
            raise ValueError(f"{type(template).__name__} has buffers or dropout: it cannot be trained stacked")
        self.template, self.k = template, len(states)
        self.names = [n for n, _ in template.named_parameters()]
        self.device = example.device
        if backend not in BACKENDS:
            raise UnknownName(f"unknown stack backend '{backend}'; known: {', '.join(BACKENDS)}")
        self.backend, self.wide, self.lanes = "vmap", None, None
        if backend in ("auto", "lanes") and self._try_lanes(states, example[:2]):
            self.backend = "lanes"
        elif backend == "lanes":
            raise ValueError("the lanes backend needs a SimpleNet, a CPU, at most 16 members and a C compiler; "
                             "use backend='wide'")
        elif backend in ("auto", "wide") and self._try_wide(states, example[:2]):
            self.backend = "wide"
        elif backend == "wide":
            raise ValueError("the wide backend does not reproduce this model; use backend='vmap'")
        else:
            self.params = stack_states(states, self.names, self.device)

    def _try_lanes(self, states: list[dict[str, Tensor]], x: Tensor) -> bool:
        """Build the lane twin and check it against vmap on `x`; False when it does not apply or does not agree."""
        from know.lanes import LaneNet

        net = LaneNet.build(self.template, self.k) if self.device.type == "cpu" else None
        if net is None:
            return False
        self.params = net.params
        self.load(states)
        got, want = net.logits(x), self._vmap_logits(x)
        if torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            self.lanes = net
            return True
        del self.params  # the next backend sets its own
        return False

    def _try_wide(self, states: list[dict[str, Tensor]], x: Tensor) -> bool:
        """Build the wide twin and check it against vmap on `x`; False leaves the stack untouched."""
        wide = fast_layout(_widened(self.template, self.k))
        named = dict(wide.named_parameters())
        try:  # a parameter outside Conv2d / Linear does not get a member axis
            params = {n: named[n].data.view(self.k, *self.template.get_parameter(n).shape) for n in self.names}
        except RuntimeError:
            return False
        self.wide, self.params = wide, params
        self.load(states)
        try:
            with torch.no_grad():
                got = self._wide_logits(x)  # (K, B, classes)
        except RuntimeError:
            got = None
        want = self._vmap_logits(x)
        if got is not None and got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return True
        self.wide = None
        return False

    @torch.no_grad()
    def load(self, states: list[dict[str, Tensor]]) -> None:
        """Overwrite every member's parameters (in place, so optimizer references stay valid)."""
        for n, p in self.params.items():
            p.copy_(torch.stack([s[n] for s in states]))

    def member(self, m: int) -> dict[str, Tensor]:
        """Member m's parameters as a CPU state_dict."""
        return {n: _contiguous_cpu(p[m]) for n, p in self.params.items()}

    def _wide_logits(self, x: Tensor) -> Tensor:
        return self.wide(x.repeat(1, self.k, 1, 1)).reshape(x.shape[0], self.k, -1).transpose(0, 1)

    @torch.no_grad()
    def _vmap_logits(self, x: Tensor) -> Tensor:
        fwd = torch.vmap(lambda p, x: torch.func.functional_call(self.template, p, (x,)), in_dims=(0, None))
        return fwd(self.params, x)

    def optimizer(self, lrs: Tensor):
        """Adam over the members with one learning rate each (K,): `StackedAdam`, or its fused lanes twin."""
        return self.lanes.adam(lrs) if self.backend == "lanes" else StackedAdam(self.params, lrs)

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) shared input -> (K, B, classes)."""
        if self.backend == "lanes":
            return self.lanes.logits(x)
        return self._wide_logits(x) if self.backend == "wide" else self._vmap_logits(x)

    def train_step(self, xs: Tensor, ys: Tensor, opt) -> Tensor:
        """`loss_and_grads`, then `opt.step` (from `optimizer`); the lanes backend does both in one pass of its
        threads. Returns the mean loss per member (K,)."""
        if self.backend == "lanes":
            return self.lanes.train_step(xs, ys, opt)
        loss, grads = self.loss_and_grads(xs, ys)
        opt.step(self.params, grads)
        return loss

    def loss_and_grads(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-member inputs (K, B, C, H, W) and labels (K, B) -> mean loss (K,) and gradients {name: (K, ...)};
        member m's gradient is that of its own mean loss, as in one-at-a-time training. The lanes backend's gradients
        are views of buffers that the next call overwrites: use them before calling again."""
        if self.backend == "lanes":
            return self.lanes.loss_and_grads(xs, ys)
        if self.backend == "vmap":
            grads, loss = torch.vmap(torch.func.grad_and_value(partial(_loss, self.template)))(self.params, xs, ys)
            return loss.detach(), grads
        wide = dict(self.wide.named_parameters())
        for p in wide.values():
            p.grad = None
        out = self.wide(xs.transpose(0, 1).flatten(1, 2)).reshape(xs.shape[1], self.k, -1)  # (B, K, classes)
        loss = F.cross_entropy(out.permute(0, 2, 1), ys.T, reduction="none").mean(0)  # (K,)
        loss.sum().backward()
        return loss.detach(), {n: wide[n].grad.reshape(p.shape) for n, p in self.params.items()}


class StackedAdam:
    """Adam over stacked parameters {name: (K, ...)} with one learning rate per member.

    The arithmetic follows `torch.optim.Adam`'s single-tensor path step for step (lerp, addcmul, bias corrections,
    eps added after dividing by sqrt(1 - beta2^t)), so a member matches `make_optimizer('adam', ...)` to rounding.
    """

    def __init__(self, params: dict[str, Tensor], lrs: Tensor, betas=ADAM_BETAS, eps: float = KERAS_ADAM_EPS):
        self.lrs = lrs.to(next(iter(params.values())).device, torch.float32)  # (K,)
        self.betas, self.eps, self.t = betas, eps, 0
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        b1, b2 = self.betas
        self.t += 1
        bc1, bc2_sqrt = 1 - b1 ** self.t, (1 - b2 ** self.t) ** 0.5
        for n, p in params.items():
            g, m, v = grads[n], self.exp_avg[n], self.exp_avg_sq[n]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            step = (self.lrs / bc1).view(-1, *[1] * (p.dim() - 1))  # (K, 1, ...)
            p.sub_(step * m / denom)


def _loss(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)


def train_epoch_stacked(stack: Stack, opt: StackedAdam, data: ImageSet, idxs: list[Tensor], batch_size: int,
                        gens: list[torch.Generator], augment: Augment | None = None,
                        desc: str | None = None) -> Tensor:
    """One epoch for the K members of `stack` at once; member m trains on data[idxs[m]] with generator gens[m].

    All idxs must have the same length (same session size), so every member takes the same number of steps of the
    same batch size. Member m draws its batch order and augmentations from gens[m] in the order `train_epoch` does.
    Returns the mean train loss per member (K,).
    """
    n, k = len(idxs[0]), len(idxs)
    if any(len(i) != n for i in idxs):
        raise ValueError("stacked members must train on index sets of equal size")
    dev = data.y.device
    orders = [batches(n, batch_size, g, device=dev) for g in gens]
    idxs = [i.to(dev) for i in idxs]
    total = torch.zeros(k, device=dev)

    def batch(step_idx: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:  # one batch per member
        sels = [i[b] for i, b in zip(idxs, step_idx)]
        xs = augment.pick(data.x, sels, gens) if augment is not None else torch.stack([data.x[s] for s in sels])
        return xs, torch.stack([data.y[s] for s in sels])

    # The next batch is drawn in a second thread while this one trains (its generators are used in the same order)
    with _progress(-(-n // batch_size), desc) as bar, ThreadPoolExecutor(1) as ahead:
        steps = iter(zip(*orders))
        first = next(steps, None)
        if first is None:
            return total
        pending = ahead.submit(batch, first)
        for step_idx in steps:
            xs, ys = pending.result()
            pending = ahead.submit(batch, step_idx)
            _train_step(stack, opt, xs, ys, total)
            bar.update()
        _train_step(stack, opt, *pending.result(), total)
        bar.update()
    return total / n


def _train_step(stack: Stack, opt: StackedAdam, xs: Tensor, ys: Tensor, total: Tensor) -> None:
    total += stack.train_step(xs, ys, opt) * xs.shape[1]


@torch.no_grad()
def evaluate_stacked(stack: Stack, data: ImageSet, batch_size: int = 1024) -> list[float]:
    """Top-1 accuracy of each member on the same data, [K floats]."""
    correct = torch.zeros(stack.k, device=data.y.device, dtype=torch.long)
    for start in range(0, len(data), batch_size):
        logits = stack.logits(data.x[start:start + batch_size])  # (K, B, classes)
        correct += (logits.argmax(-1) == data.y[start:start + batch_size]).sum(1)
    return [float(c) / max(1, len(data)) for c in correct]


# ---------------------------------------------------------------------------------------------- configs and files
def read_checkpoint(path: str | Path | None) -> dict | None:
    """A resumable checkpoint, or None when there is none or it cannot be read (damaged from outside: writes are
    atomic): the caller then starts that part again instead of failing or trusting it."""
    if not path or not Path(path).is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        import warnings
        warnings.warn(f"ignoring unreadable checkpoint {path} ({type(e).__name__}); recomputing from the start")
        return None


