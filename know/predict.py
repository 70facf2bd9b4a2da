"""KNOW prediction: run any registered predictor recurrently over a trajectory.

``predict(trajectory, method="known", steps=3)`` returns one full state_dict per recurrence step (×2, ×4, ×8 for
r = 0.5) that loads with ``strict=True`` into the model the trajectory came from. Each step appends the prediction
to the window and drops the oldest snapshot, as in the official ``KNOW_Predict.py``.

Which hyper-model predicts which parameter (routing) and what happens to normalisation layers: `know.routes`.

Memory: every element-wise predictor sees one parameter at a time in chunks of ``chunk_rows`` scalars, so the
working memory is a few chunks (about 100 MB at the default 2^22), whatever the model size; the outputs themselves
are the returned state_dicts. KNOWN runs through :class:`FastKNOWN` (folded layers, a fused C++ kernel on CPU).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from know.baselines import TSV, LogFit, Naive, Predictor, TaskVector
from know.errors import KnowError, TrajectoryError, UnknownName
from know.fastknown import FastKNOWN
from know.io import atomic_save, atomic_write
from know.known import KNOWN, load_known, load_official
from know.routes import NORM_POLICIES, ROUTINGS, route
from know.trajectory import Trajectory, load_official_mat
from know.wnn import WNNPredictor

CHUNK_ROWS = 1 << 22  # scalars per element-wise chunk: 4 MiB per snapshot row, large enough to amortise dispatch


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
PREDICTORS: dict[str, Callable[..., Predictor]] = {
    "known": KnownPredictor,
    "naive": Naive,
    "taskvector": TaskVector,
    "logfit": LogFit,
    "logfit_index": functools.partial(LogFit, variant="index"),
    "quadfit": functools.partial(LogFit, variant="quad"),
    "tsv": TSV,
    "wnn": WNNPredictor,  # the authors' earlier nowcaster (know/wnn.py)
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


# ================================================================================================ unit function
def load_our_known(metatrain_dir: Path) -> dict:
    """The KNOWN models (best validation epoch) a meta-training unit wrote, by kind."""
    return {p.stem.removeprefix("known_"): load_known(p) for p in sorted(Path(metatrain_dir).glob("known_*.safetensors"))}


def unit_predict(cfg: dict, out: Path, deps: dict) -> dict:
    """step1.pt .. stepN.pt predicted from the trajectory of deps["trajectory"] (KNOWN "ours" from deps["known"])."""
    traj = Trajectory.load(deps["trajectory"] / "trajectory.safetensors")
    known = load_our_known(deps["known"]) if "known" in deps else cfg["known"]
    p = cfg["predict"]
    states = predict(traj, method=cfg["method"], steps=cfg["steps"], known=known, routing=p["routing"],
                     norm=p["norm"])
    theta0 = traj.theta(0)
    moved = []
    for k, state in enumerate(states, start=1):
        atomic_save(state, out / f"step{k}.pt")
        moved.append(_relative_change(state, theta0))
    return {"relative_change": moved}


def _relative_change(state: dict, ref: dict) -> float:
    """‖state − ref‖ / ‖ref‖ over floating tensors: how far a prediction moved from Θ0."""
    num = sum(float((state[k].double() - ref[k].double()).pow(2).sum()) for k in ref if ref[k].is_floating_point())
    den = sum(float(ref[k].double().pow(2).sum()) for k in ref if ref[k].is_floating_point())
    return (num / max(den, 1e-30)) ** 0.5


# ================================================================================================ CLI
def save_checkpoint(state: Mapping[str, Tensor], path: Path, meta: Mapping) -> Path:
    """One predicted state_dict as safetensors (metadata: JSON under "know"), written atomically."""
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


class _CallableModule(types.ModuleType):
    """`know.predict(...)` calls `predict`: the package attribute and the submodule are then the same object."""

    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
