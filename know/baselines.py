"""Untrained weight-extrapolation baselines behind the same interface as KNOWN prediction.

Every predictor reads a window of the last `window` snapshots of one parameter, stacked (S, *shape) oldest first
and Θ0 (full data) last, and returns the next value Θ(-1) "toward more data". `rollout` repeats this by sliding the
window (append the prediction, drop the oldest), exactly like the official KNOWN script; ×2/×4/×8 = Θ(-1)/Θ(-2)/Θ(-3)
for r = 0.5. Which parameters are predicted at all (the routing and norm policies) is decided by
:func:`know.predict.predict`, identically for every method.

Definitions follow docs/baselines.md; [paper] = what the cited source defines, [ours] = our adaptation.
Notation: W = (Θ4, Θ3, Θ2, Θ1, Θ0) (window order), Δk = Θ(k-1) − Θk, so Δ1 = Θ0 − Θ1.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class Predictor:
    """Interface shared by KNOWN and the baselines.

    Attributes:
        window: how many of the newest snapshots `step` reads (the trajectory must have at least that many).
        elementwise: True if every scalar is predicted from its own history only; predict() may then feed
            any flat chunk of a parameter, shaped (S, n). False (TSV): it gets whole tensors (S, *shape).
    """

    name = "predictor"
    window = 5
    elementwise = True

    def step(self, window: Tensor, kind: str, name: str) -> Tensor:
        """window (S, *shape), oldest first, Θ0 last -> the next snapshot (*shape).

        kind is the hyper-model the routing policy chose ("conv", "fc" or "bias"); name the parameter name.
        A subclass implements `step` or `step_rows` (each defaults to the other).
        """
        return self.step_rows(list(window[-self.window:]), kind, name)

    def step_rows(self, rows: list[Tensor], kind: str, name: str) -> Tensor:
        """Like `step` on the snapshots as a list (oldest first): sliding then needs no stacking copies."""
        return self.step(torch.stack(rows), kind, name)

    def rollout(self, window: Tensor, steps: int, kind: str, name: str) -> list[Tensor]:
        """`steps` recurrent predictions, sliding the window after each (official recurrence)."""
        rows, out = list(window[-self.window:]), []
        for _ in range(steps):
            new = self.step_rows(rows, kind, name)
            out.append(new)
            rows = rows[1:] + [new]
        return out

    def describe(self) -> dict:
        """Options that identify this predictor (saved with every prediction)."""
        return {"method": self.name}


# ------------------------------------------------------------------------------------------------ naive
class Naive(Predictor):
    """Θ0 itself, for every step (the naive-transfer baseline)."""

    name, window = "naive", 1

    def step_rows(self, rows: list[Tensor], kind: str, name: str) -> Tensor:
        return rows[-1].clone()


# ------------------------------------------------------------------------------------------------ taskvector
class TaskVector(Predictor):
    """Θ(-1) = Θ0 + λ(Θ0 − Θ1).

    [paper] Ilharco et al., "Editing Models with Task Arithmetic" (ICLR 2023): θ = θ_pre + λτ.
    [ours] τ is the negated forgetting vector Θ0 − Θ1 (default λ = 1; sweep {0.5, 1, 2}). Under sliding,
    Θ(-m) = Θ0 + (λ + … + λ^m)Δ1, so ×8 = Θ0 + 3Δ1 at λ = 1. This is the paper's S = 2 ablation row and also
    ExPO / WiSE-FT extrapolation with α = λ.
    """

    name, window = "taskvector", 2

    def __init__(self, lam: float = 1.0):
        self.lam = float(lam)

    def step_rows(self, rows: list[Tensor], kind: str, name: str) -> Tensor:
        return torch.lerp(rows[-2], rows[-1], 1.0 + self.lam)  # Θ1 + (1+λ)(Θ0 − Θ1) = Θ0 + λΔ1

    def describe(self) -> dict:
        return {"method": self.name, "lam": self.lam}


# ------------------------------------------------------------------------------------------------ logfit
def lsq_coeffs(ts: list[float], basis: Callable[[float], list[float]], t_eval: float) -> list[float]:
    """c such that Σ c_i w_i is the least-squares fit of w_i ≈ basis(t_i)·β evaluated at t_eval (float64)."""
    a = torch.tensor([basis(t) for t in ts], dtype=torch.float64)  # (S, p)
    e = torch.tensor(basis(t_eval), dtype=torch.float64)  # (p,)
    return (torch.linalg.pinv(a).T @ e).tolist()  # (S,)


# variant -> (basis in the fit variable, the fit variable of window position i of S (oldest 0))
LOGFIT_VARIANTS: dict[str, tuple[Callable[[float], list[float]], Callable[[int], float]]] = {
    # w ≈ a + b log n_k, log n_k affine in the session index, so fit against the index itself
    "log": (lambda t: [1.0, t], lambda i: float(i)),
    # w ≈ a + b ln t, t = 1..S oldest to newest
    "index": (lambda t: [1.0, math.log(t)], lambda i: float(i + 1)),
    # w ≈ a + b log n + c log² n
    "quad": (lambda t: [1.0, t, t * t], lambda i: float(i)),
}


class LogFit(Predictor):
    """Per-scalar least-squares fit over the window, evaluated one step toward more data.

    [ours] (docs/baselines.md) variant "log": w ≈ a + b·log n with n_k = |D0| r^k; because log n_k is affine in k the
    result is independent of r and |D0|: Θ(-1) = (8Θ0 + 5Θ1 + 2Θ2 − Θ3 − 4Θ4)/10 for S = 5.
    mode "sliding" (default) refits on the slid window at every step (×4 coefficients (1.14, .60, .06, −.48, −.32),
    ×8 (1.512, .63, −.252, −.434, −.456)); mode "fixed" evaluates the first line further out,
    Θ(-m) = mean(W) + (m+2)b. Variants: "index" = `logfit_index` (w ≈ a + b ln t, t = 1..5, predict t = 6;
    coefficients (.537, .421, .273, .064, −.295)); "quad" = `quadfit` (quadratic in log n; (1.8, 0, −.8, −.6, .6)).
    """

    name = "logfit"

    def __init__(self, mode: str = "sliding", variant: str = "log", window: int = 5):
        if mode not in ("sliding", "fixed"):
            raise ValueError(f"LogFit mode must be 'sliding' or 'fixed', got {mode!r}")
        if variant not in LOGFIT_VARIANTS:
            raise ValueError(f"LogFit variant must be one of {', '.join(LOGFIT_VARIANTS)}, got {variant!r}")
        self.mode, self.variant, self.window = mode, variant, int(window)
        self.name = {"log": "logfit", "index": "logfit_index", "quad": "quadfit"}[variant]  # registry names

    def coeffs(self, s: int, ahead: int = 1) -> list[float]:
        """Weights of the s window positions (oldest first) for the value `ahead` steps past the newest."""
        basis, var = LOGFIT_VARIANTS[self.variant]
        return lsq_coeffs([var(i) for i in range(s)], basis, var(s - 1 + ahead))

    @staticmethod
    def _apply(rows: list[Tensor], c: list[float]) -> Tensor:
        out = rows[0] * c[0]
        for ci, w in zip(c[1:], rows[1:]):
            out.add_(w, alpha=ci)
        return out

    def step_rows(self, rows: list[Tensor], kind: str, name: str) -> Tensor:
        rows = rows[-self.window:]
        return self._apply(rows, self.coeffs(len(rows)))

    def rollout(self, window: Tensor, steps: int, kind: str, name: str) -> list[Tensor]:
        if self.mode == "sliding":
            return super().rollout(window, steps, kind, name)
        rows = list(window[-self.window:])
        return [self._apply(rows, self.coeffs(len(rows), m)) for m in range(1, steps + 1)]

    def describe(self) -> dict:
        return {"method": self.name, "mode": self.mode, "variant": self.variant, "window": self.window}


# ------------------------------------------------------------------------------------------------ TSV
def _polar(m: Tensor) -> Tensor:
    """Nearest (semi-)orthonormal matrix P Qᵀ of m = P S Qᵀ, via the Gram matrix of its smaller side.

    (mᵀm)^(-1/2) through eigh is ~40x faster than an SVD of a 512x4608 float64 matrix; directions with
    eigenvalue ≤ 1e-12·max (rank deficiency, where the polar factor is not unique) are dropped.
    """
    tall = m.shape[0] >= m.shape[1]
    g = m.T @ m if tall else m @ m.T
    lam, q = torch.linalg.eigh(g)
    keep = lam > lam.max().clamp_min(0) * 1e-12
    inv_sqrt = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
    root = (q * inv_sqrt) @ q.T
    return m @ root if tall else root @ m


def _svd_top(delta: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets (u (m,k), s (k,), vh (k,n)) from the eigen-decomposition of the smaller Gram
    matrix (float64; only the largest singular values are kept, so squaring the condition number is harmless)."""
    if delta.shape[0] > delta.shape[1]:
        u, s, vh = _svd_top(delta.T, k)
        return vh.T, s, u.T
    lam, vecs = torch.linalg.eigh(delta @ delta.T)  # ascending
    u = vecs[:, -k:].flip(1)  # (m, k)
    s = lam[-k:].flip(0).clamp_min(0).sqrt()  # (k,)
    inv = torch.where(s > 0, 1 / s.clamp_min(1e-300), torch.zeros_like(s))
    vh = (u.T @ delta) * inv[:, None]  # (k, n)
    return u, s, vh


def tsv_merge(deltas: list[Tensor]) -> Tensor:
    """TSV-M of T task matrices [paper]: top ⌊R/T⌋ (≥1) triplets of each, U and V orthogonalised, U⊥ Σ V⊥ᵀ."""
    t = len(deltas)
    k = max(1, min(deltas[0].shape) // t)
    parts = [_svd_top(d, k) for d in deltas]
    u = torch.cat([p[0] for p in parts], 1)  # (m, T k)
    s = torch.cat([p[1] for p in parts])  # (T k,)
    v = torch.cat([p[2] for p in parts], 0).T  # (n, T k)
    return (_polar(u) * s) @ _polar(v).T


class TSV(Predictor):
    """Task Singular Vectors as an extrapolator: Θ(-1) = Θ0 + λM.

    [paper] Gargiulo et al., "Task Singular Vectors" (CVPR 2025): TSV-M merges per-layer task matrices by keeping
    each task's top ⌊R/T⌋ singular triplets and orthogonalising the concatenated U and V; non-2-D tensors take
    the mean of the task vectors.
    [ours] The tasks are the T = S−1 steps Δ1…Δ(S-1) of the window; M = TSV-M(Δ1…ΔT)/T for matrices and the mean
    step for 1-D tensors. Conv kernels (Cout, Cin, kh, kw) are reshaped to (Cout, Cin·kh·kw) unless
    conv_as_matrix=False (then the plain mean step, the official rule for >2-D tensors). λ = 1. Sliding
    recomputes the steps. mode="last": TSV-C of Δ1 alone, rank ⌊0.1·R⌋ (≥1): Θ0 + λ·SVD_k(Δ1).
    The SVDs run in float64 through Gram-matrix eigen-decompositions (see _svd_top). `diagnostics[name]`
    records, per step, cos(M, Δ1) and ‖M‖/‖Δ1‖ (TSV-M assumes near-orthogonal tasks; successive steps are not).
    """

    name, elementwise = "tsv", False

    def __init__(self, lam: float = 1.0, mode: str = "merge", conv_as_matrix: bool = True, window: int = 5,
                 rank_frac: float = 0.1):
        if mode not in ("merge", "last"):
            raise ValueError(f"TSV mode must be 'merge' or 'last', got {mode!r}")
        self.lam, self.mode, self.conv_as_matrix = float(lam), mode, bool(conv_as_matrix)
        self.window, self.rank_frac = int(window), float(rank_frac)
        self.diagnostics: dict[str, list[dict]] = {}

    def _as_matrix(self, shape: torch.Size) -> bool:
        return len(shape) == 2 or (len(shape) > 2 and self.conv_as_matrix)

    def direction(self, window: Tensor) -> Tensor:
        """M for one window (S, *shape) -> (*shape)."""
        steps = [window[i] - window[i - 1] for i in range(window.shape[0] - 1, 0, -1)]  # Δ1, Δ2, ...
        shape = window.shape[1:]
        if self.mode == "last":
            steps = steps[:1]
        if not self._as_matrix(shape):
            return torch.stack(steps).mean(0)
        mats = [d.reshape(shape[0], -1).double() for d in steps]
        if self.mode == "last":
            k = max(1, int(self.rank_frac * min(mats[0].shape)))
            u, s, vh = _svd_top(mats[0], k)
            m = (u * s) @ vh
        else:
            m = tsv_merge(mats) / len(mats)
        return m.to(window.dtype).reshape(shape)

    def step(self, window: Tensor, kind: str, name: str) -> Tensor:
        m = self.direction(window[-self.window:])
        d1 = (window[-1] - window[-2]).flatten().double()
        mf = m.flatten().double()
        denom = d1.norm() * mf.norm()
        self.diagnostics.setdefault(name, []).append(
            {"cos_m_delta1": float(mf @ d1 / denom) if denom > 0 else float("nan"),
             "norm_ratio": float(mf.norm() / d1.norm()) if d1.norm() > 0 else float("nan")})
        return window[-1] + self.lam * m

    def describe(self) -> dict:
        return {"method": self.name, "lam": self.lam, "mode": self.mode, "conv_as_matrix": self.conv_as_matrix,
                "window": self.window}
