"""FastKNOWN: inference-only KNOWN (and WNN, the same network), the one fast forward beside the reference module.

The layers are folded exactly (see `FastKNOWN`) and run either in the fused C++ kernel (know/kernels/known.cpp, CPU
float32: a tile of H*16 rows, one row per float lane, every weight a broadcast scalar, so all layers are FMAs on
registers/L1; AVX-512 where the CPU has it, 2x AVX2 otherwise; the 64-term projection sum is blocked by 8, since one
64-long FMA chain loses ~1e-6 on spiky rows) or as folded torch ops on any device (CUDA included). Both agree with
the Keras model within 2e-6 (tests/test_known.py).
"""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from know import kernels
from know.device import full_fp32
from know.errors import KnowError, UnknownName
from know.known import LEAKY_SLOPE

TORCH_CHUNK_ROWS = 1 << 16  # rows per folded-torch chunk on a CPU (the kernel's fallback)
GPU_CHUNK_ROWS = 1 << 22  # rows per folded-torch chunk on a GPU
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
    """The compiled fused KNOWN kernel (know/kernels/known.cpp, built once per machine), or None.

    None when $KNOW_CKERNEL=0, no C++ compiler is found, the build fails or the ctypes mirror of its weights struct
    is out of date (then a warning says so and the folded pure-torch path is used: same results within 2e-6, a few
    times slower).
    """
    fallback = "KNOWN prediction uses the slower pure-torch path"
    lib = kernels.load("known", _CXX_FLAGS, fallback)
    if lib is not None and not kernels.check_struct(lib, "sizeof_weights", _KernelWeights, fallback):
        return None
    if lib is not None:
        lib.known_tile.restype = ctypes.c_int
        lib.known_rows.restype = None
        lib.known_rows.argtypes = [ctypes.POINTER(_KernelWeights), ctypes.POINTER(_FP), ctypes.c_long,
                                   ctypes.c_long, _FP, ctypes.c_int]
    return lib


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
        with full_fp32():  # fp32 on CUDA too (no TF32): the agreement with Keras is 2e-6
            return self._torch_rows_fp32(rows, add_last)

    def _torch_rows_fp32(self, rows: Sequence[Tensor], add_last: bool) -> Tensor:
        dev = rows[0].device
        t, n = self._on(dev), rows[0].numel()
        out = torch.empty(n, dtype=torch.float32, device=dev)
        step = TORCH_CHUNK_ROWS if dev.type == "cpu" else GPU_CHUNK_ROWS
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
