"""Stacked training: K models of one architecture, with their own weights, learning rates and data orders, trained
as one (the meta-dataset collector's many small trajectories).

Every member sees exactly the batches and augmentations its own generator would give the one-at-a-time
`know.train.train_epoch`, so both agree to float rounding (Adam's normalisation amplifies rounding in near-zero
gradients, so long runs at large lr drift apart by small amounts).

Backends are registered classes (`BACKENDS`, tried in that order by "auto"): each builds itself for a template and K
members, or returns None when it does not apply, and exposes `params` {name: (K, *shape)} (views of its storage),
`logits`, `loss_and_grads`, `optimizer` and `train_step`:
- "lanes" (`know.lanes`): member k in SIMD lane k, hand-written C kernels; SimpleNets on a CPU, K <= 16;
- "wide": every Conv2d a grouped convolution, every Linear a batched matmul, so the template's own forward runs on
  (B, K*C, H, W) inputs (nets whose other ops act per channel);
- "vmap": `torch.func.functional_call` under `torch.vmap` (any buffer-free model).
Lanes and wide are checked numerically against vmap when a stack is built; one that disagrees is dropped.
"""
from __future__ import annotations

import copy
import itertools
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from know.data import Augment, ImageSet, batches
from know.device import fast_layout
from know.errors import UnknownName
from know.lanes import LaneNet
from know.train import ADAM_BETAS, KERAS_ADAM_EPS, contiguous_cpu, progress


def stackable(model: nn.Module) -> bool:
    """Whether `model` can be trained stacked: no buffers (BatchNorm running statistics would be updated in
    place, which no backend batches) and no dropout (its randomness would differ from one-at-a-time)."""
    no_dropout = not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    return not list(model.buffers()) and no_dropout


# ---------------------------------------------------------------------------------------------- backends
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


@torch.no_grad()
def vmap_logits(template: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """(B, C, H, W) shared input -> (K, B, classes) with each member's `params`: the reference every backend meets."""
    fwd = torch.vmap(lambda p, x: torch.func.functional_call(template, p, (x,)), in_dims=(0, None))
    return fwd(params, x)


class VmapBackend:
    """`torch.func.functional_call` under `torch.vmap`: any buffer-free model."""

    def __init__(self, template: nn.Module, k: int, device: torch.device):
        self.template = template
        self.params = {n: torch.zeros(k, *p.shape, device=device) for n, p in template.named_parameters()}

    @classmethod
    def build(cls, template: nn.Module, k: int, device: torch.device) -> VmapBackend:
        return cls(template, k, device)

    def logits(self, x: Tensor) -> Tensor:
        return vmap_logits(self.template, self.params, x)

    def loss_and_grads(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        grads, loss = torch.vmap(torch.func.grad_and_value(partial(_loss, self.template)))(self.params, xs, ys)
        return loss.detach(), grads

    def optimizer(self, lrs: Tensor) -> StackedAdam:
        return StackedAdam(self.params, lrs)

    def train_step(self, xs: Tensor, ys: Tensor, opt: StackedAdam) -> Tensor:
        loss, grads = self.loss_and_grads(xs, ys)
        opt.step(self.params, grads)
        return loss


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


class WideBackend(VmapBackend):
    """Grouped convolutions and batched matmuls: the template's own forward on K members' channels side by side."""

    def __init__(self, template: nn.Module, k: int, wide: nn.Module, params: dict[str, Tensor]):
        self.template, self.k, self.wide, self.params = template, k, wide, params

    @classmethod
    def build(cls, template: nn.Module, k: int, device: torch.device) -> WideBackend | None:
        wide = fast_layout(_widened(template, k).to(device))
        named = dict(wide.named_parameters())
        try:  # a parameter outside Conv2d / Linear does not get a member axis
            params = {n: named[n].data.view(k, *p.shape) for n, p in template.named_parameters()}
        except RuntimeError:
            return None
        return cls(template, k, wide, params)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.wide(x.repeat(1, self.k, 1, 1)).reshape(x.shape[0], self.k, -1).transpose(0, 1)

    def loss_and_grads(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        wide = dict(self.wide.named_parameters())
        for p in wide.values():
            p.grad = None
        out = self.wide(xs.transpose(0, 1).flatten(1, 2)).reshape(xs.shape[1], self.k, -1)  # (B, K, classes)
        loss = F.cross_entropy(out.permute(0, 2, 1), ys.T, reduction="none").mean(0)  # (K,)
        loss.sum().backward()
        return loss.detach(), {n: wide[n].grad.reshape(p.shape) for n, p in self.params.items()}


class LanesBackend:
    """`know.lanes.LaneNet` (C kernels, SimpleNets on a CPU, K <= 16) with Adam fused into its training step."""

    @classmethod
    def build(cls, template: nn.Module, k: int, device: torch.device) -> LaneNet | None:
        return LaneNet.build(template, k, ADAM_BETAS, KERAS_ADAM_EPS) if device.type == "cpu" else None


BACKENDS = {"lanes": LanesBackend, "wide": WideBackend, "vmap": VmapBackend}  # "auto" tries them in this order


# ---------------------------------------------------------------------------------------------- the stack
class Stack:
    """K models of one architecture with their own weights, trained as one by a backend of `BACKENDS`.

    backend: "auto" (the first that applies and agrees with vmap) or a name, which must apply.
    `params` are {name: (K, *shape)} views of the trained tensors: update them in place.
    """

    def __init__(self, template: nn.Module, states: list[dict[str, Tensor]], example: Tensor,
                 backend: str = "auto"):
        if not stackable(template):
            raise ValueError(f"{type(template).__name__} has buffers or dropout: it cannot be trained stacked")
        if backend != "auto" and backend not in BACKENDS:
            raise UnknownName(f"unknown stack backend '{backend}'; known: auto, {', '.join(BACKENDS)}")
        self.template, self.k, self.device = template, len(states), example.device
        self.names = [n for n, _ in template.named_parameters()]
        for name in BACKENDS if backend == "auto" else [backend]:
            self.impl = self._build(name, states, example[:2])
            if self.impl is not None:
                self.backend = name
                return
        raise ValueError(f"the {backend} backend does not apply to or reproduce this model; use backend='auto'")

    def _build(self, name: str, states: list[dict[str, Tensor]], x: Tensor):
        """Backend `name` with `states` loaded, or None when it does not apply or disagrees with vmap on `x`."""
        impl = BACKENDS[name].build(self.template, self.k, self.device)
        if impl is None:
            return None
        self.params = impl.params
        self.load(states)
        if name == "vmap":
            return impl
        try:
            got = impl.logits(x)  # (K, B, classes)
        except RuntimeError:
            return None
        want = vmap_logits(self.template, self.params, x)
        return impl if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5) else None

    @torch.no_grad()
    def load(self, states: list[dict[str, Tensor]]) -> None:
        """Overwrite every member's parameters (in place, so optimizer references stay valid)."""
        for n, p in self.params.items():
            p.copy_(torch.stack([s[n] for s in states]))

    def member(self, m: int) -> dict[str, Tensor]:
        """Member m's parameters as a CPU state_dict."""
        return {n: contiguous_cpu(p[m]) for n, p in self.params.items()}

    def optimizer(self, lrs: Tensor):
        """Adam over the members with one learning rate each (K,): `StackedAdam`, or the backend's fused twin."""
        return self.impl.optimizer(lrs)

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) shared input -> (K, B, classes)."""
        return self.impl.logits(x)

    def train_step(self, xs: Tensor, ys: Tensor, opt) -> Tensor:
        """`loss_and_grads`, then the optimizer's step (the lanes backend does both in one pass of its threads).
        Returns the mean loss per member (K,)."""
        return self.impl.train_step(xs, ys, opt)

    def loss_and_grads(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-member inputs (K, B, C, H, W) and labels (K, B) -> mean loss (K,) and gradients {name: (K, ...)};
        member m's gradient is that of its own mean loss, as in one-at-a-time training. The lanes backend's gradients
        are views of buffers that the next call overwrites: use them before calling again."""
        return self.impl.loss_and_grads(xs, ys)


# ---------------------------------------------------------------------------------------------- epochs
def train_epoch_stacked(stack: Stack, opt, data: ImageSet, idxs: list[Tensor], batch_size: int,
                        gens: list[torch.Generator], augment: Augment | None = None,
                        desc: str | None = None, max_steps: int | None = None) -> Tensor:
    """One epoch for the K members of `stack` at once; member m trains on data[idxs[m]] with generator gens[m].

    All idxs must have the same length (same session size), so every member takes the same number of steps of the
    same batch size. Member m draws its batch order and augmentations from gens[m] in the order `train_epoch` does.
    Returns the mean train loss per member (K,). `max_steps` stops the epoch early (rehearsals).
    """
    n, k = len(idxs[0]), len(idxs)
    if any(len(i) != n for i in idxs):
        raise ValueError("stacked members must train on index sets of equal size")
    dev = data.y.device
    orders = [batches(n, batch_size, g, device=dev) for g in gens]
    idxs = [i.to(dev) for i in idxs]
    total, seen = torch.zeros(k, device=dev), 0

    def batch(step_idx: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:  # one batch per member
        sels = [i[b] for i, b in zip(idxs, step_idx)]
        xs = augment.pick(data.x, sels, gens) if augment is not None else torch.stack([data.x[s] for s in sels])
        return xs, torch.stack([data.y[s] for s in sels])

    # The next batch is drawn in a second thread while this one trains (its generators are used in the same order)
    steps_total = -(-n // batch_size) if max_steps is None else min(max_steps, -(-n // batch_size))
    with progress(steps_total, desc) as bar, ThreadPoolExecutor(1) as ahead:
        steps = itertools.islice(zip(*orders), steps_total)
        first = next(steps, None)
        if first is None:
            return total
        pending = ahead.submit(batch, first)
        for step_idx in steps:
            xs, ys = pending.result()
            pending = ahead.submit(batch, step_idx)
            total += stack.train_step(xs, ys, opt) * xs.shape[1]
            seen += xs.shape[1]
            bar.update()
        xs, ys = pending.result()
        total += stack.train_step(xs, ys, opt) * xs.shape[1]
        seen += xs.shape[1]
        bar.update()
    return total / seen


@torch.no_grad()
def evaluate_stacked(stack: Stack, data: ImageSet, batch_size: int = 1024) -> list[float]:
    """Top-1 accuracy of each member on the same data, [K floats]."""
    correct = torch.zeros(stack.k, device=data.y.device, dtype=torch.long)
    for start in range(0, len(data), batch_size):
        logits = stack.logits(data.x[start:start + batch_size])  # (K, B, classes)
        correct += (logits.argmax(-1) == data.y[start:start + batch_size]).sum(1)
    return [float(c) / max(1, len(data)) for c in correct]
