"""Routing: which KNOWN hyper-model (Conv / FC / Bias) predicts a parameter, or None = keep Θ0's value.

- ``"official"`` (default, the official inference script): every conv kernel (any kernel size: 7x7 stems,
  1x1 shortcuts, depthwise, conv1d) -> Conv; Linear weights and every other ≥2-D parameter of kind "other"
  (ViT ``pos_embed``, ``cls_token``, relative-position tables ...) -> FC; biases of Conv/Linear -> Bias.
- ``"3x3"`` (the meta-dataset README's split): only 3x3 conv kernels -> Conv; all other ≥2-D weights (other
  conv kernels, Linear, patch embeddings, ≥2-D "other") -> FC; biases -> Bias.
In both, 0-D/1-D parameters of kind "other" (layer-scale gamma, logit scales ...) keep Θ0's value [ours]: the
official script only predicts layers holding exactly a kernel and a bias, and no hyper-model saw such vectors.

Normalisation policy
--------------------
- ``"keep"`` (default, [ours]): γ/β of BatchNorm/LayerNorm/GroupNorm are Θ0's; the official script left them at
  their fresh initial values, which looks accidental (docs/method.md §4).
- ``"bias"``: γ and β are predicted by the Bias model (baselines: the same rule, docs/baselines.md `extrapolate_norm`).
All buffers (running statistics, ``num_batches_tracked``) are always Θ0's. Kept tensors are shared views of Θ0
(clone before editing in place).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from know.errors import UnknownName


def _route_official(kind: str, ndim: int) -> str | None:
    if kind == "conv":
        return "conv"
    if kind == "fc" or (kind == "other" and ndim >= 2):
        return "fc"
    return "bias" if kind == "bias" else None


def _route_3x3(kind: str, ndim: int, shape: Sequence[int] = ()) -> str | None:
    shape = tuple(shape)
    # torch Conv2d (Cout, Cin, 3, 3), or the official meta-dataset's flat (3, 3, N) kernel block
    if kind == "conv" and ((ndim == 4 and shape[-2:] == (3, 3)) or (ndim == 3 and shape[:2] == (3, 3))):
        return "conv"
    if kind in ("conv", "fc") or (kind == "other" and ndim >= 2):
        return "fc"
    return "bias" if kind == "bias" else None


ROUTINGS: dict[str, Callable[..., str | None]] = {
    "official": lambda kind, shape: _route_official(kind, len(shape)),
    "3x3": lambda kind, shape: _route_3x3(kind, len(shape), shape),
}
NORM_POLICIES = ("keep", "bias")


def route(kind: str, shape: Sequence[int], routing: str = "official", norm: str = "keep") -> str | None:
    """Hyper-model ("conv" | "fc" | "bias") that predicts a parameter of this kind and shape, or None (keep Θ0)."""
    if routing not in ROUTINGS:
        raise UnknownName(f"unknown routing '{routing}'; choices: {', '.join(ROUTINGS)}")
    if norm not in NORM_POLICIES:
        raise UnknownName(f"unknown norm policy '{norm}'; choices: {', '.join(NORM_POLICIES)}")
    if kind == "norm":
        return "bias" if norm == "bias" else None
    return ROUTINGS[routing](kind, tuple(shape))
