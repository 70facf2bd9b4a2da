"""Devices: where a run computes, and the memory layouts that are faster there (speed only, same results)."""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu. A CUDA device is set up the way the field trains on it
    (`configure_cuda`)."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else \
        torch.device(device)
    if dev.type == "cuda":
        configure_cuda()
    return dev


def configure_cuda() -> None:
    """TF32 matmuls and convolutions (Ampere and later: fp32 range, 10-bit mantissa; training is insensitive to
    it) and cudnn.benchmark (the fastest convolution algorithm per input shape; our shapes are fixed per run).
    Prediction (KNOWN) opts out of TF32 with `full_fp32`: its agreement with Keras is 2e-6."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def full_fp32():
    """Within the block, CUDA matmuls run in full fp32 (no TF32)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def fast_layout(model: nn.Module) -> nn.Module:
    """Channels-last weights for convolutional models (oneDNN's native layout on a CPU, what tensor cores want under
    bf16 on CUDA): a speed choice only, the same results to rounding (tested). On the 2-core test machine: simplenet
    steps 1.7x faster, resnet18_know (width 0.25) 1.25x."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(model)` when enabled, made once per model (the caller keeps `model` for its state_dict: a
    compiled module's names carry a prefix), else the model itself."""
    if not enabled:
        return model
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model)
    return _COMPILED[model]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when `enabled` (the field's standard mixed precision: no loss scaling needed); a no-op
    elsewhere, so CPU runs are exact fp32."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
