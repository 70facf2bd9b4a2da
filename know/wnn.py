"""WNN, the authors' earlier weight nowcaster (Jang et al., ICML 2023), as a KNOW predictor (method "wnn").

WNN is KNOWN's network (`know.known.KNOWN`, weights from `know.known.load_wnn`) meta-trained on ordinary training
trajectories instead of forgetting ones, and applied to a *normalised* history. Running it on forgetting windows tests
whether meta-training on forgetting matters. The rule follows `CNN/WNN.py` of jjh6297/WNN as described in
docs/known_spec.md §11; per scalar, w = (w0 … w4) oldest first (w4 = Θ0), in float64 like the
official callback's buffer:

    s = w0,  L = w − s,  R = (max L − min L) + 1e-8,  xn = (L / (R + 1e-5)) / 2      # xn0 = 0, |xn| ≤ 0.5
    y = net(float32(xn), Δxn)                                                        # (-1, 1): a normalised step
    kernels:  new = (xn4 + y)·2(R + 1e-5) + s          (= w4 + 2(R + 1e-5)·y)

Bias rule (`bias_rule`):
- "corrected" (default, [ours]): biases use the kernel formula above, i.e. Θ0 plus the predicted step.
- "official": the released bias helper adds the raw newest value where the kernel helpers add xn4,
  new = (w4 + y)·2(R + 1e-5) + s = w0 + 2(R + 1e-5)(w4 + y); for a small range this pulls a bias back to about its
  oldest (most-forgotten) snapshot. It looks like a bug; it is reproduced bit for bit for comparison.
The two rules differ only on tensors routed to the Bias model; the gap is w0 − w4 + 2(R + 1e-5)·w4.

`normalise=False` is the un-normalised variant of `PVTV2/WNN_PVTv2.py`: new = w4 + net(w, Δw), KNOWN's rule with
WNN's weights (exp overflows on a few raw rows give ±1 like Keras, never NaN).

Routing is `know.predict.route` (the "official" policy by default), which matches the WNN callback: conv kernels ->
Conv model, Linear kernels -> FC model, every bias -> Bias model, BatchNorm/LayerNorm γ, β kept (the callback skips
BN; a LayerNorm crashes it). Where the callback fails (rank-3 kernels such as Conv1d: NameError; ≥3-D "other"
parameters) we follow the routing policy: Conv1d -> Conv model, pos_embed-like tensors -> FC model [ours].

Multi-step: the official callback forecasts once every 5 epochs and never feeds a forecast back; here `rollout` slides
the window (append the prediction, drop the oldest) like every other predictor [ours].

The network runs through `know.fastknown.FastKNOWN` (the same architecture; its folded dx is the difference of the
float32 xn rather than the float32 cast of the float64 difference: within the README tolerances, see tests/test_wnn.py).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor

from know.baselines import Predictor
from know.errors import UnknownName
from know.known import load_wnn
from know.fastknown import FastKNOWN

RANGE_EPS = 1e-8  # added to the window range (the official code's "maxval")
SCALE_EPS = 1e-5  # added again in the denominator: ((max − min) + 1e-8) + 1e-5
BIAS_RULES = ("corrected", "official")
CPU_CHUNK = 1 << 16  # rows per CPU chunk: float64 temporaries (~3 MB) stay in cache; GPUs take the whole input


class Normalised(NamedTuple):
    xn: Tensor  # (5, n) float64 normalised history, oldest first
    shift: Tensor  # (n,) float64: s = w0
    range: Tensor  # (n,) float64: R = (max − min) + 1e-8; the scale is 2(R + 1e-5)


def normalise_history(window: Tensor) -> Normalised:
    """Per-scalar normalisation of the official helpers, float64: window (S, n) oldest first -> Normalised."""
    level = window.to(torch.float64, copy=True)  # (S, n), becomes L then xn in place
    shift = level[0].clone()
    level.sub_(shift)  # level[0] = 0
    rng = level.amax(0).sub_(level.amin(0)).add_(RANGE_EPS)
    return Normalised(level.div_(rng + SCALE_EPS).mul_(0.5), shift, rng)  # (L / (R + 1e-5)) / 2


def denormalise(newest: Tensor, y: Tensor, norm: Normalised, raw_newest: bool = False) -> Tensor:
    """new = (xn4 + y)·2(R + 1e-5) + s in float64, or with the raw newest w4 in place of xn4 (official bias helper).

    newest: (n,) the raw w4 (only read when raw_newest); y: (n,) network output. Returns float64 (n,).
    """
    base = newest.to(torch.float64) if raw_newest else norm.xn[-1]
    return (base + y.to(torch.float64)) * (norm.range + SCALE_EPS) * 2 + norm.shift


class WNNPredictor(Predictor):
    """The released WNN hyper-models (Conv / FC / Bias) behind the KNOWN predictor interface.

    Args:
        bias_rule: "corrected" (default: biases move like kernels, Θ0 + step) or "official" (the released bias
            helper's raw-w4 rule); see the module docstring.
        normalise: True (default, the CNN/RL helpers); False = the un-normalised PVTv2 helpers.
        weights_dir: folder with NWNN_{Conv,FC,Bias}_13.h5 (default: $KNOW_WNN_WEIGHTS_DIR, then the cache).
        backend, threads: passed to FastKNOWN ("auto" = the fused C++ kernel on CPU when it builds).
    """

    name, window = "wnn", 5

    def __init__(self, bias_rule: str = "corrected", normalise: bool = True,
                 weights_dir: str | os.PathLike | None = None, backend: str = "auto", threads: int | None = None):
        if bias_rule not in BIAS_RULES:
            raise UnknownName(f"unknown WNN bias_rule '{bias_rule}'; choices: {', '.join(BIAS_RULES)}")
        self.bias_rule, self.normalise = bias_rule, bool(normalise)
        self.weights_dir, self.backend, self.threads = weights_dir, backend, threads
        self._fast: dict[str, FastKNOWN] = {}

    def fast(self, kind: str) -> FastKNOWN:
        """The compiled network of `kind` ("conv" | "fc" | "bias"), loaded on first use."""
        if kind not in self._fast:
            self._fast[kind] = FastKNOWN(load_wnn(kind, self.weights_dir), backend=self.backend,
                                         threads=self.threads)
        return self._fast[kind]

    def step_rows(self, rows: list[Tensor], kind: str, name: str) -> Tensor:
        shape = rows[-1].shape
        rows = [r.reshape(-1) for r in rows[-self.window:]]  # views for contiguous rows
        fast = self.fast(kind)
        if not self.normalise:
            return fast.step_rows(rows, add_last=True).view(shape)
        n = rows[0].numel()
        out = torch.empty(n, dtype=torch.float32, device=rows[0].device)
        chunk = CPU_CHUNK if rows[0].device.type == "cpu" else max(n, 1)
        raw = kind == "bias" and self.bias_rule == "official"
        for i in range(0, n, chunk):
            norm = normalise_history(torch.stack([r[i:i + chunk] for r in rows]))  # (5, c)
            y = fast.step_rows(list(norm.xn.to(torch.float32)), add_last=False)  # (c,)
            out[i:i + chunk] = denormalise(rows[-1][i:i + chunk], y, norm, raw_newest=raw)
        return out.view(shape)

    def describe(self) -> dict:
        return {"method": self.name, "bias_rule": self.bias_rule, "normalise": self.normalise}
