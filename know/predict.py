"""KNOW prediction: run any registered predictor recurrently over a trajectory.

``predict(trajectory, method="known", steps=3)`` returns one full state_dict per recurrence step (×2, ×4, ×8 for
r = 0.5) that loads with ``strict=True`` into the model the trajectory came from. Each step appends the prediction
to the window and drops the oldest snapshot, as in the official ``KNOW_Predict.py``.

Routing policies: which hyper-model (Conv / FC / Bias) predicts a parameter, or None = keep Θ0
---------------------------------------------------------------------------------------------
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
  their fresh initial values, which looks accidental (paper.md §4).
- ``"bias"``: γ and β are predicted by the Bias model (baselines: the same rule, baselines.md `extrapolate_norm`).
All buffers (running statistics, ``num_batches_tracked``) are always Θ0's. Kept tensors are shared views of Θ0
(clone before editing in place).

Memory: every element-wise predictor sees one parameter at a time in chunks of ``chunk_rows`` scalars, so the
working memory is a few chunks (about 100 MB at the default 2^22), whatever the model size; the outputs themselves
are the returned state_dicts. KNOWN runs through :class:`FastKNOWN` (folded layers, a fused C++ kernel on CPU).
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from know import native
from know.baselines import TSV, LogFit, Naive, Predictor, TaskVector
from know.errors import KnowError, TrajectoryError, UnknownName
from know.trajectory import Trajectory

CHUNK_ROWS = 1 << 22  # scalars per element-wise chunk: 4 MiB per snapshot row, large enough to amortise dispatch
TORCH_CHUNK = 1 << 16  # rows per folded-torch chunk (CPU fallback); GPUs use CHUNK_ROWS at once
LEAKY_SLOPE = 0.3  # Keras LeakyReLU default, as in KNOWN


# ================================================================================================ routing
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


# ================================================================================================ fused kernel
# Row-in-lane layout: a tile of H*16 rows, one row per float lane; every weight is a broadcast scalar, so all
# layers are FMAs on registers/L1 with no transposes. Generic GCC vector types: AVX-512 where the CPU has it,
# 2x AVX2 otherwise. The 64-term projection sum is blocked by 8 (one 64-long FMA chain loses ~1e-6 on spiky rows).
_KERNEL_SRC = r"""
#include <math.h>
#include <string.h>
#if defined(__AVX512F__)
#define L 16   /* rows per vector */
#define H 3    /* vectors per tile */
#define CB 8   /* projection outputs per register block */
#else          /* AVX2 / other: 8-lane vectors, 16 registers */
#define L 8
#define H 2
#define CB 4
#endif
#define JB 8
typedef float v16 __attribute__((vector_size(4 * L)));
typedef int vi16 __attribute__((vector_size(4 * L)));
#define WID 64
#define CMP 8
#define PRJ 32
struct Weights {
  int window;
  const float *m1, *b1;                          /* (window, 144), (144): [h_x 64 | h_dx 64 | z_x 8 | z_dx 8] */
  const float *mr[2], *br[2], *mg[2], *bg[2];    /* (8, 64), (64) per branch: rate, gain */
  const float *ma[2], *ba[2];                    /* (8, 32), (32): additive folded through project (+ its bias) */
  const float *pw[2];                            /* (64, 32): project */
  const float *hw, *hb;                          /* (64), (1): head */
};
static inline v16 splat(float a) { return (v16){} + a; }
#if defined(__AVX512F__)
#include <immintrin.h>
static inline v16 vexp(v16 v) {  /* Cephes expf polynomial, ~1 ulp; roundscale/scalef do the 2^k part */
  __m512 x = _mm512_min_ps(_mm512_max_ps((__m512)v, _mm512_set1_ps(-100.0f)), _mm512_set1_ps(100.0f));
  __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return (v16)_mm512_scalef_ps(p, fx);
}
#else
static inline v16 vexp(v16 x) {  /* Cephes expf, ~1 ulp */
  x = x > 88.3762626647949f ? splat(88.3762626647949f) : x;
  x = x < -87.3365478515625f ? splat(-87.3365478515625f) : x;
  v16 fx = x * 1.44269504088896341f;
  fx = (fx + 12582912.0f) - 12582912.0f;
  v16 r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  v16 p = splat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.0f;
  vi16 k = __builtin_convertvector(fx, vi16);
  return p * (v16)((k + 127) << 23);
}
#endif
static void tile(const Weights &W, const float *const *rows, long r0, int nr, float *out, int add_last) {
  const int w = W.window, NP = 2 * WID + 2 * CMP;
  v16 xv[H][32];
  for (int q = 0; q < H; q++) {
    int nq = nr - q * L; nq = nq < 0 ? 0 : (nq > L ? L : nq);
    for (int i = 0; i < w; i++) {
      float t[L] = {0};
      if (nq) memcpy(t, rows[i] + r0 + q * L, nq * sizeof(float));
      memcpy(&xv[q][i], t, sizeof(v16));
    }
  }
  v16 h[2 * WID][H], z[2 * CMP][H];
  for (int j = 0; j < NP; j++) {
    v16 acc[H];
    float m = W.m1[j], b = W.b1[j];
    for (int q = 0; q < H; q++) acc[q] = xv[q][0] * m + b;
    for (int i = 1; i < w; i++) { float mi = W.m1[i * NP + j]; for (int q = 0; q < H; q++) acc[q] += xv[q][i] * mi; }
    for (int q = 0; q < H; q++) {
      if (j < 2 * WID) h[j][q] = acc[q];
      else z[j - 2 * WID][q] = acc[q] > 0.0f ? acc[q] : splat(0.0f);
    }
  }
  v16 y[H];
  for (int q = 0; q < H; q++) y[q] = splat(W.hb[0]);
  for (int b = 0; b < 2; b++) {
    v16 (*zb)[H] = z + CMP * b;
    v16 e[WID][H];
    for (int j = 0; j < WID; j++) {
      v16 rate[H], gain[H];
      float rw = W.mr[b][j], gw = W.mg[b][j], rb = W.br[b][j], gb = W.bg[b][j];
      for (int q = 0; q < H; q++) { rate[q] = zb[0][q] * rw + rb; gain[q] = zb[0][q] * gw + gb; }
#pragma GCC unroll 8
      for (int k = 1; k < CMP; k++) {
        float rk = W.mr[b][k * WID + j], gk = W.mg[b][k * WID + j];
        for (int q = 0; q < H; q++) { rate[q] += zb[k][q] * rk; gain[q] += zb[k][q] * gk; }
      }
      for (int q = 0; q < H; q++) e[j][q] = gain[q] * vexp(rate[q] * h[WID * b + j][q]);
    }
    for (int c0 = 0; c0 < PRJ; c0 += CB) {
      v16 o[CB][H];
#pragma GCC unroll 32
      for (int c = 0; c < CB; c++) {
        float a0 = W.ma[b][c0 + c], ab = W.ba[b][c0 + c];
        for (int q = 0; q < H; q++) o[c][q] = zb[0][q] * a0 + ab;
        for (int k = 1; k < CMP; k++) { float ak = W.ma[b][k * PRJ + c0 + c]; for (int q = 0; q < H; q++) o[c][q] += zb[k][q] * ak; }
      }
      for (int j0 = 0; j0 < WID; j0 += JB) {
        v16 t[CB][H];
#pragma GCC unroll 32
        for (int c = 0; c < CB; c++) { float wc = W.pw[b][j0 * PRJ + c0 + c]; for (int q = 0; q < H; q++) t[c][q] = e[j0][q] * wc; }
        for (int j = j0 + 1; j < j0 + JB; j++) {
          const float *pw = W.pw[b] + j * PRJ + c0;
#pragma GCC unroll 32
          for (int c = 0; c < CB; c++) { float wc = pw[c]; for (int q = 0; q < H; q++) t[c][q] += e[j][q] * wc; }
        }
#pragma GCC unroll 32
        for (int c = 0; c < CB; c++) for (int q = 0; q < H; q++) o[c][q] += t[c][q];
      }
#pragma GCC unroll 32
      for (int c = 0; c < CB; c++) {
        float hw = W.hw[PRJ * b + c0 + c];
        for (int q = 0; q < H; q++) { v16 v = o[c][q]; v = v > 0.0f ? v : v * 0.3f; y[q] += v * hw; }
      }
    }
  }
  for (int q = 0; q < H; q++) {
    float yt[L], xl[L];
    memcpy(yt, &y[q], sizeof(v16));
    memcpy(xl, &xv[q][w - 1], sizeof(v16));
    for (int r = 0; r < L && q * L + r < nr; r++) out[r0 + q * L + r] = (add_last ? xl[r] : 0.0f) + tanhf(yt[r]);
  }
}
extern "C" int known_tile(void) { return H * L; }
extern "C" void known_rows(const Weights *W, const float *const *rows, long start, long stop, float *out, int add_last) {
  for (long r0 = start; r0 < stop; r0 += H * L) {
    int nr = (stop - r0) < H * L ? (int)(stop - r0) : H * L;
    tile(*W, rows, r0, nr, out, add_last);
  }
}
"""
_KERNEL_BLOCK = 1 << 14  # minimum rows per thread task (~3 ms): amortises the task hand-off
_KERNEL_MAX_WINDOW = 32
_CXX_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno", "-std=c++17"]
_FP = ctypes.POINTER(ctypes.c_float)


class _KernelWeights(ctypes.Structure):
    _fields_ = [("window", ctypes.c_int), ("m1", _FP), ("b1", _FP), ("mr", _FP * 2), ("br", _FP * 2),
                ("mg", _FP * 2), ("bg", _FP * 2), ("ma", _FP * 2), ("ba", _FP * 2), ("pw", _FP * 2),
                ("hw", _FP), ("hb", _FP)]


@functools.lru_cache(maxsize=1)
def load_kernel() -> ctypes.CDLL | None:
    """The compiled fused KNOWN kernel (built once per machine, see `know.native`), or None.

    None when $KNOW_CKERNEL=0, no C++ compiler is found, or the build fails (then a warning says so and the
    folded pure-torch path is used: same results within 2e-6, a few times slower).
    """
    lib = native.build("known", _KERNEL_SRC, "c++", _CXX_FLAGS, "KNOWN prediction uses the slower pure-torch path")
    if lib is not None:
        lib.known_tile.restype = ctypes.c_int
        lib.known_rows.restype = None
        lib.known_rows.argtypes = [ctypes.POINTER(_KernelWeights), ctypes.POINTER(_FP), ctypes.c_long,
                                   ctypes.c_long, _FP, ctypes.c_int]
    return lib


# ================================================================================================ FastKNOWN
class FastKNOWN:
    """Inference-only KNOWN compiled from a KNOWN's weights; reads only x (dx is folded in).

    Exact algebraic folds, computed in float64 then rounded once: dx = x D is linear, so both branches' lifts are
    one (window, 128) matrix; the compress layers are linear before their ReLU, so z_pre = x (W_lift W_comp) + c
    joins the same matmul; the additive term only feeds the linear projection, so project∘additive is one 8->32
    map. What remains per branch is rate/gain (8->64), one exp, and the 64->32 projection before the LeakyReLU.
    Matches KNOWN.forward within 2e-6 (tested on known_vectors.npz).

    Backends: "c" (fused C++ kernel, CPU float32), "torch" (folded torch ops, any device), "auto" (c if it builds).
    """

    def __init__(self, model, backend: str = "auto", threads: int | None = None):
        if backend not in ("auto", "c", "torch"):
            raise UnknownName(f"unknown FastKNOWN backend '{backend}'; choices: auto, c, torch")
        self.window = model.window
        self.t = _fold(model)  # name -> float32 CPU tensor
        self._dev: dict[str, dict[str, Tensor]] = {}
        dims_ok = (model.width, model.compressed, model.proj) == (64, 8, 32) and model.window <= _KERNEL_MAX_WINDOW
        self.lib = load_kernel() if backend != "torch" and dims_ok else None
        if backend == "c" and self.lib is None:
            raise KnowError("the fused C++ KNOWN kernel is unavailable (no compiler, $KNOW_CKERNEL=0, or a "
                            "non-release KNOWN width); use backend='torch'")
        self.threads = threads
        self._kw = self._kernel_weights() if self.lib is not None else None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    # -- public
    def __call__(self, x: Tensor) -> Tensor:
        """x (N, window) -> increments (N, 1), like KNOWN.forward(x, x[:, 1:] - x[:, :-1])."""
        rows = list(x.to(torch.float32).T.contiguous())
        return self.step_rows(rows, add_last=False)[:, None]

    def step_rows(self, rows: Sequence[Tensor], add_last: bool = True) -> Tensor:
        """rows: `window` tensors (n,), oldest first -> the new values x[-1] + KNOWN(x, dx), shape (n,)."""
        if len(rows) != self.window:
            raise ValueError(f"FastKNOWN expects {self.window} rows, got {len(rows)}")
        if self.lib is not None and rows[0].device.type == "cpu":
            return self._kernel_rows([r.to(torch.float32).contiguous() for r in rows], add_last)
        return self._torch_rows(rows, add_last)

    # -- C kernel
    def _kernel_weights(self) -> _KernelWeights:
        p = lambda n: ctypes.cast(self.t[n].data_ptr(), _FP)  # noqa: E731
        kw = _KernelWeights()
        kw.window, kw.m1, kw.b1, kw.hw, kw.hb = self.window, p("m1"), p("b1"), p("hw"), p("hb")
        for f in ("mr", "br", "mg", "bg", "ma", "ba", "pw"):
            arr = getattr(kw, f)
            arr[0], arr[1] = p(f"{f}0"), p(f"{f}1")
        return kw

    def _kernel_rows(self, rows: list[Tensor], add_last: bool) -> Tensor:
        n = rows[0].numel()
        out = torch.empty(n, dtype=torch.float32)
        ptrs = (_FP * self.window)(*[ctypes.cast(r.data_ptr(), _FP) for r in rows])
        optr, kw = ctypes.cast(out.data_ptr(), _FP), ctypes.byref(self._kw)
        nt = max(1, min(self.threads or torch.get_num_threads(), n // _KERNEL_BLOCK))
        # ~8 blocks per thread, pulled dynamically: a core shared with another process does not stall the rest
        tile = self.lib.known_tile()
        size = max(_KERNEL_BLOCK, -(-n // (8 * nt))) // tile * tile
        starts = range(0, n, size)
        call = lambda a: self.lib.known_rows(kw, ptrs, a, min(a + size, n), optr, int(add_last))  # noqa: E731
        if nt == 1:
            for a in starts:
                call(a)
        else:  # ctypes releases the GIL: plain threads, no second OpenMP runtime next to torch's
            if self._pool is None or self._pool_size < nt:
                self._pool, self._pool_size = ThreadPoolExecutor(nt), nt
            list(self._pool.map(call, starts))
        return out

    # -- torch
    def _on(self, device: torch.device) -> dict[str, Tensor]:
        key = str(device)
        if key not in self._dev:
            t = {k: v.to(device) for k, v in self.t.items()}
            t["mrg0"] = torch.cat([t["mr0"], t["mg0"]], 1)  # (8, 128): rate | gain in one matmul
            t["mrg1"] = torch.cat([t["mr1"], t["mg1"]], 1)
            t["brg0"], t["brg1"] = torch.cat([t["br0"], t["bg0"]]), torch.cat([t["br1"], t["bg1"]])
            self._dev[key] = t
        return self._dev[key]

    def _torch_rows(self, rows: Sequence[Tensor], add_last: bool) -> Tensor:
        dev = rows[0].device
        t, n = self._on(dev), rows[0].numel()
        out = torch.empty(n, dtype=torch.float32, device=dev)
        step = TORCH_CHUNK if dev.type == "cpu" else CHUNK_ROWS
        for i in range(0, n, step):
            x = torch.stack([r.reshape(-1)[i:i + step].to(torch.float32) for r in rows], 1)  # (c, window)
            y = _folded_forward(t, x)
            out[i:i + step] = y + x[:, -1] if add_last else y
        return out


def _fold(model) -> dict[str, Tensor]:
    """Folded KNOWN weights (float64 algebra, float32 result); layout as in the kernel's `Weights`."""
    d = lambda p: p.detach().to("cpu", torch.float64)  # noqa: E731
    w = model.window
    diff = torch.zeros(w, w - 1, dtype=torch.float64)  # dx = x @ diff
    idx = torch.arange(w - 1)
    diff[idx, idx], diff[idx + 1, idx] = -1.0, 1.0
    bx, bd = model.branch_x, model.branch_dx
    lift = [d(bx.lift.weight).T, diff @ d(bd.lift.weight).T]  # (w, 64) each
    comp = [lf @ d(b.compress.weight).T for lf, b in zip(lift, (bx, bd))]  # (w, 8)
    cb = [d(b.lift.bias) @ d(b.compress.weight).T + d(b.compress.bias) for b in (bx, bd)]
    t = {"m1": torch.cat(lift + comp, 1), "b1": torch.cat([d(bx.lift.bias), d(bd.lift.bias)] + cb)}
    for i, b in enumerate((bx, bd)):
        proj = d(b.project.weight).T  # (64, 32)
        t[f"mr{i}"], t[f"br{i}"] = d(b.rate.weight).T, d(b.rate.bias)
        t[f"mg{i}"], t[f"bg{i}"] = d(b.gain.weight).T, d(b.gain.bias)
        t[f"ma{i}"], t[f"ba{i}"] = d(b.additive.weight).T @ proj, d(b.additive.bias) @ proj + d(b.project.bias)
        t[f"pw{i}"] = proj
    t["hw"], t["hb"] = d(model.head.weight).reshape(-1), d(model.head.bias)
    return {k: v.to(torch.float32).contiguous() for k, v in t.items()}


def _folded_forward(t: dict[str, Tensor], x: Tensor) -> Tensor:
    """x (n, window) -> increments (n,), the folded graph with torch ops."""
    w = 64
    p = torch.addmm(t["b1"], x, t["m1"])  # (n, 144) = h_x | h_dx | z_x | z_dx
    z = p[:, 2 * w:].relu()  # (n, 16)
    y = t["hb"].expand(x.shape[0]).clone()
    for i in range(2):
        zi, hi = z[:, 8 * i:8 * i + 8], p[:, w * i:w * i + w]
        rg = torch.addmm(t[f"brg{i}"], zi, t[f"mrg{i}"])  # (n, 128) = rate | gain
        e = rg[:, :w].mul(hi).exp_().mul_(rg[:, w:])  # gain * exp(rate * h)
        o = torch.addmm(torch.addmm(t[f"ba{i}"], zi, t[f"ma{i}"]), e, t[f"pw{i}"])  # (n, 32)
        y = torch.addmv(y, F.leaky_relu(o, LEAKY_SLOPE), t["hw"][32 * i:32 * i + 32])
    return y.tanh_()


# ================================================================================================ KNOWN predictor
class KnownPredictor(Predictor):
    """KNOWN hyper-models as a predictor: `kind` selects the Conv / FC / Bias model.

    known: "official" (the authors' weights, `know.known.load_official`), a path to our safetensors weights
    (`know.known.load_known`; a single model serves every kind), a KNOWN, or a dict kind -> KNOWN.
    Models are loaded and compiled lazily, the first time a kind is needed.
    """

    name = "known"

    def __init__(self, known="official", backend: str = "auto", threads: int | None = None):
        self.source = known if isinstance(known, (str, os.PathLike)) else "in-memory"
        self.models = self._resolve(known)
        self.backend, self.threads = backend, threads
        self._fast: dict[str, FastKNOWN] = {}
        self.window = 5 if callable(self.models) else next(iter(self.models.values())).window  # official: 5

    @staticmethod
    def _resolve(known):
        from know.known import KNOWN, load_known, load_official
        if known is None or (isinstance(known, str) and known == "official"):
            return functools.lru_cache(maxsize=None)(load_official)  # kind -> KNOWN, loaded on first use
        if isinstance(known, (str, os.PathLike)):
            known = load_known(known)
        if isinstance(known, KNOWN):
            return {k: known for k in ("conv", "fc", "bias")}
        if isinstance(known, Mapping):
            return dict(known)
        raise TypeError(f"known must be 'official', a path, a KNOWN or a dict kind -> KNOWN, got {type(known)}")

    def _model(self, kind: str):
        if callable(self.models):
            return self.models(kind)
        if kind not in self.models:
            raise UnknownName(f"no KNOWN model for kind '{kind}'; have: {', '.join(self.models)}")
        return self.models[kind]

    def fast(self, kind: str) -> FastKNOWN:
        if kind not in self._fast:
            self._fast[kind] = FastKNOWN(self._model(kind), backend=self.backend, threads=self.threads)
        return self._fast[kind]

    def step(self, window: Tensor, kind: str, name: str) -> Tensor:
        return self.rollout(window, 1, kind, name)[0]

    def rollout(self, window: Tensor, steps: int, kind: str, name: str) -> list[Tensor]:
        fast, shape = self.fast(kind), window.shape[1:]
        rows = [r.reshape(-1) for r in window[-self.window:]]  # views when the window is row-contiguous
        out = []
        for _ in range(steps):
            new = fast.step_rows(rows)
            out.append(new.view(shape))
            rows = rows[1:] + [new]
        return out

    def describe(self) -> dict:
        return {"method": self.name, "known": str(self.source), "window": self.window}


# ================================================================================================ registry
def _wnn(**kwargs) -> Predictor:
    from know.wnn import WNNPredictor  # imported on use: know.wnn builds on this module
    return WNNPredictor(**kwargs)


PREDICTORS: dict[str, Callable[..., Predictor]] = {
    "known": KnownPredictor,
    "naive": Naive,
    "taskvector": TaskVector,
    "logfit": LogFit,
    "logfit_index": functools.partial(LogFit, variant="index"),
    "quadfit": functools.partial(LogFit, variant="quad"),
    "tsv": TSV,
    "wnn": _wnn,  # the authors' earlier nowcaster (know/wnn.py)
}


def register_predictor(name: str, factory: Callable[..., Predictor]) -> None:
    """Add a predictor (e.g. "wnn") so every table and `know predict --method` can run it by name."""
    PREDICTORS[name] = factory


def create_predictor(name: str, **kwargs) -> Predictor:
    """Build a registered predictor; `known=` only reaches "known" (other methods ignore it)."""
    if name not in PREDICTORS:
        raise UnknownName(f"unknown prediction method '{name}'; choices: {', '.join(PREDICTORS)}")
    if name != "known":
        kwargs.pop("known", None)
    elif kwargs.get("known", "x") is None:
        kwargs.pop("known")
    try:
        return PREDICTORS[name](**kwargs)
    except TypeError as e:
        raise KnowError(f"bad options for method '{name}': {e}") from None


# ================================================================================================ predict
@torch.inference_mode()
def predict(trajectory: Trajectory, method: str | Predictor = "known", steps: int = 3, known=None,
            routing: str = "official", norm: str = "keep", chunk_rows: int = CHUNK_ROWS,
            device: str | torch.device | None = None, progress: bool = False, **method_kwargs
            ) -> list[dict[str, Tensor]]:
    """KNOW-predict `steps` recurrent steps; element [m-1] is the state_dict of Θ(-m) (×(1/r)^m data).

    Args:
        trajectory: S ≥ the method's window snapshots (a longer one uses its newest ones).
        method: a registered name (see PREDICTORS) or a Predictor; method_kwargs go to its constructor
            (e.g. lam=2 for taskvector, mode="fixed" for logfit).
        known: KNOWN weights for method="known": "official" (default), a path, a KNOWN or {kind: KNOWN}.
        routing / norm: see the module docstring.
        chunk_rows: scalars per element-wise chunk (bounds working memory).
        device: where to compute (default: the trajectory's device); results stay on the trajectory's device.
    """
    pred = method if isinstance(method, Predictor) else create_predictor(method, known=known, **method_kwargs)
    if steps < 1:
        raise KnowError(f"steps must be ≥ 1, got {steps}")
    if trajectory.num_sessions < pred.window:
        raise TrajectoryError(f"method '{pred.name}' reads {pred.window} sessions but the trajectory has "
                              f"{trajectory.num_sessions}")
    outs: list[dict[str, Tensor]] = [{} for _ in range(steps)]
    names = list(trajectory.params)
    for name in _progress(names, progress):
        p = trajectory.params[name]
        target = route(trajectory.kinds[name], p.shape[1:], routing, norm)
        preds = [p[-1]] * steps if target is None else _rollout(pred, p[-pred.window:], steps, target, name,
                                                               chunk_rows, device)
        for out, value in zip(outs, preds):
            out[name] = value
    for out in outs:
        out.update(trajectory.buffers)
    return outs


def _rollout(pred: Predictor, window: Tensor, steps: int, kind: str, name: str, chunk_rows: int,
             device) -> list[Tensor]:
    home = window.device
    dev = torch.device(device) if device is not None else home
    if not pred.elementwise:
        return [v.to(home) for v in pred.rollout(window.to(dev), steps, kind, name)]
    flat = window.reshape(window.shape[0], -1)  # (w, P) view: each row contiguous
    n = flat.shape[1]
    outs = [torch.empty(n, dtype=torch.float32, device=home) for _ in range(steps)]
    for i in range(0, n, chunk_rows):
        chunk = flat[:, i:i + chunk_rows].to(dev)  # (w, c)
        for out, value in zip(outs, pred.rollout(chunk, steps, kind, name)):
            out[i:i + chunk_rows] = value.reshape(-1)
    return [o.view(window.shape[1:]) for o in outs]


def _progress(items: list[str], on: bool):
    if not on:
        return items
    from tqdm import tqdm
    return tqdm(items, desc="predict", unit="param", file=sys.stderr)


# ================================================================================================ CLI
def save_checkpoint(state: Mapping[str, Tensor], path: Path, meta: Mapping) -> Path:
    """One predicted state_dict as safetensors (metadata: JSON under "know"), written atomically."""
    from safetensors.torch import save_file

    from know.jobs import atomic_write
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"know": json.dumps(dict(meta), default=str)}))
    return path


def _parse_opt(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise KnowError(f"--opt expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="know predict", description="KNOW-predict weights from a trajectory "
                                "(one checkpoint per recurrence step: x2, x4, x8 for r = 0.5).")
    p.add_argument("--trajectory", required=True, help="trajectory .safetensors (know forget) or official .mat")
    p.add_argument("--out", required=True, help="output folder: step1.safetensors ... stepN.safetensors")
    p.add_argument("--method", default="known", help=f"one of: {', '.join(PREDICTORS)}")
    p.add_argument("--steps", type=int, default=3, help="recurrence steps (default 3: x2, x4, x8)")
    p.add_argument("--known", default="official", help="KNOWN weights: 'official' or a .safetensors path")
    p.add_argument("--routing", default="official", choices=list(ROUTINGS))
    p.add_argument("--norm", default="keep", choices=list(NORM_POLICIES))
    p.add_argument("--device", default=None, help="compute device (default: cpu)")
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --opt lam=2 --opt mode=fixed (repeatable)")
    return p


def _load_any(path: str) -> Trajectory:
    from know.trajectory import load_official_mat
    return load_official_mat(path) if path.lower().endswith(".mat") else Trajectory.load(path)


def main(argv: list[str] | None = None) -> int:
    """`know predict`: write one state_dict per step into --out."""
    args = build_parser().parse_args(argv)
    traj = _load_any(args.trajectory)
    opts = dict(_parse_opt(o) for o in args.opt)
    pred = create_predictor(args.method, known=args.known, **opts)
    states = predict(traj, pred, steps=args.steps, routing=args.routing, norm=args.norm,
                     chunk_rows=args.chunk_rows, device=args.device, progress=True)
    rate = traj.meta.get("rate")
    for m, state in enumerate(states, start=1):
        meta = {**pred.describe(), "step": m, "factor": (1 / rate) ** m if rate else None, "routing": args.routing,
                "norm": args.norm, "trajectory": str(args.trajectory), "trajectory_meta": traj.meta}
        path = save_checkpoint(state, Path(args.out) / f"step{m}.safetensors", meta)
        print(f"step {m}: {path}")
    return 0
