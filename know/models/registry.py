"""Models chosen by name: an explicit registry plus any timm model as `timm:<name>`."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from know.errors import UnknownName

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: register a builder `fn(num_classes, in_chans, img_size, **kwargs) -> nn.Module` under `name`
    (builders of size-agnostic networks ignore img_size)."""
    def deco(fn):
        _MODELS[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_MODELS) + ["timm:<name>"]


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, **kwargs) -> nn.Module:
    """Build model `name` for `num_classes` outputs and `in_chans` input channels.

    `timm:<name>` builds any timm model; `img_size` is passed to timm models that take it (ViT, PVTv2, ...).
    """
    if name.startswith("timm:"):
        return _create_timm(name[5:], num_classes, in_chans, img_size, **kwargs)
    if name not in _MODELS:
        raise UnknownName(f"unknown model '{name}'; known: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


def _create_timm(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs) -> nn.Module:
    import timm

    if name not in timm.list_models():
        raise UnknownName(f"unknown timm model '{name}'; see timm.list_models(), e.g. resnet18, vit_tiny_patch16_224")
    common = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans) | kwargs  # pretrained=True may come
    try:
        return timm.create_model(name, img_size=img_size, **common)
    except TypeError:  # convnets such as resnet take no img_size
        return timm.create_model(name, **common)
