"""T-G: what KNOW prediction costs, and what the forgetting trajectory costs on top of the original training.

Prediction time (per model, one cached unit): a synthetic `sessions`-long trajectory with the parameter shapes of
the real model (values: the group-(a) drift of the KNOWN reference vectors; the work does not depend on the values)
is predicted `steps` times with the official KNOWN on the current device, through the same `know.predict.predict`
as the tables. One warm-up (weights, kernel build, first-touch memory), then the best of `repeats` timings of all
`steps` recurrences and of one. Every parameter counts in "per parameter", also those the routing keeps (norms),
as in the paper's "all ResNet-18 parameters". The unit's key holds the hardware it is timed on (CPU model and
core count, or the GPU name), so another machine times again.

Forgetting overhead (from the Table 1 units of the profile, 100 % data): the paper's formula
(1 − r^(S−1)) / (1 − r) × the original training, beside the share of image-epochs the S−1 sessions add to
pre-training, Σ_{k=1}^{S−1} |D_k| e_s / (|D_0| e_p), and the measured ratio forget seconds / pre-train seconds.
The seconds are the units' wall times (they include loading the data; the forget unit also evaluates every Θk on
the test split) unless the units report `train_s` (then those).
"""
from __future__ import annotations

import os
from dataclasses import replace
import platform
import time
from pathlib import Path

import torch

from know.config import CostCfg
from know.device import resolve_device
from know.fastknown import load_kernel
from know.models import create_model
from know.predict import create_predictor, predict
from know.routes import route
from know.trajectory import Trajectory, param_kinds






# ---------------------------------------------------------------- measuring

def hardware_id(device: str = "auto") -> str:
    """The device a timing runs on, in words: GPU name, or CPU model and core count."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu: {model}, {os.cpu_count()} cores"


def shaped_trajectory(model: str, kwargs: dict, c: CostCfg, device: torch.device):
    """A `c.sessions`-long trajectory with the model's parameter shapes and group-(a) drift values."""
    net = create_model(model, num_classes=c.num_classes, in_chans=c.in_chans, img_size=c.img_size, **kwargs)
    kinds, g = param_kinds(net), torch.Generator().manual_seed(c.seed)
    params = {}
    for name, p in net.named_parameters():
        x0 = torch.randn(p.numel(), generator=g) * 0.05
        mu = torch.randn(p.numel(), generator=g) * 0.002  # per-scalar drift
        steps = mu + torch.randn(c.sessions - 1, p.numel(), generator=g) * 0.002  # (S-1, n)
        params[name] = torch.cat([x0[None], x0 + steps.cumsum(0)]).reshape(c.sessions, *p.shape).to(device)
    return Trajectory(params=params, kinds={n: kinds[n] for n in params}, meta={"synthetic": model})


def _best_time(fn, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predicted_count(traj, routing: str) -> int:
    """Scalars a hyper-model predicts (the rest keep Θ0's values)."""
    return sum(p[0].numel() for n, p in traj.params.items() if route(traj.kinds[n], p.shape[1:], routing))


def time_prediction(model: str, c: CostCfg) -> dict:
    """Seconds for `c.steps` recurrences and for one, over every parameter of `model` (see the module docstring)."""
    if c.limit_steps:  # a rehearsal: does it run at all?
        c = replace(c, steps=1, repeats=1)
    dev = resolve_device(c.device)
    torch.set_num_threads(c.threads or len(os.sched_getaffinity(0)))  # not the executor's per-job share
    traj = shaped_trajectory(model, c.model_kwargs.get(model, {}), c, dev)
    pred = create_predictor("known", known=c.known)
    run = lambda steps: predict(traj, pred, steps=steps, routing=c.routing)  # noqa: E731
    run(1)  # warm-up
    total, one = _best_time(lambda: run(c.steps), c.repeats, dev), _best_time(lambda: run(1), c.repeats, dev)
    n = traj.num_params
    return {"model": model, "params": n, "predicted_params": predicted_count(traj, c.routing), "steps": c.steps,
            "seconds_steps": total, "seconds_per_step": one, "s_per_param_steps": total / n,
            "s_per_param_step": one / n, "device": dev.type, "hardware": hardware_id(str(dev)),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "backend": "c" if dev.type == "cpu" and load_kernel() is not None else "torch",
            "load_avg": round(os.getloadavg()[0], 2)}  # other work on the machine slows a CPU timing


def unit_cost(cfg: dict, out: Path, deps: dict) -> dict:
    """Unit function: time one model's prediction."""
    return time_prediction(cfg["model"], CostCfg(**cfg["cost"]))


def overhead_formula(rate: float, sessions: int) -> float:
    """The paper's extra training of a trajectory, in units of the original training: (1 − r^(S−1)) / (1 − r)."""
    return (1 - rate ** (sessions - 1)) / (1 - rate) if rate != 1 else float(sessions - 1)


def data_ratio(sizes: list[int], pretrain_epochs: int, epochs_per_session: int) -> float:
    """Image-epochs of sessions 1 .. S−1 over those of pre-training (sizes indexed by k, D0 first)."""
    return sum(sizes[1:]) * epochs_per_session / (sizes[0] * pretrain_epochs)


def _seconds(record: dict) -> tuple[float, str]:
    value = record.get("value") or {}
    if value.get("train_s") is not None:
        train = value["train_s"]
        return float(sum(t for t in train if t) if isinstance(train, list) else train), "train_s"
    return float(record.get("wall_s") or float("nan")), "unit wall time"


def overhead_row(cfg, pretrain_rec: dict, forget_rec: dict) -> dict:
    """One CSV row: formula vs image-epoch share vs measured seconds of the forgetting trajectory."""
    fc = cfg.forget
    sizes = forget_rec["value"]["session_sizes"]
    (pre_s, pre_src), (fgt_s, fgt_src) = _seconds(pretrain_rec), _seconds(forget_rec)
    return {"part": "overhead", "model": fc.model, "rate": fc.rate, "sessions": fc.sessions,
            "pretrain_epochs": fc.pretrain_epochs, "epochs_per_session": fc.epochs_per_session,
            "session_sizes": " ".join(map(str, sizes)), "formula": overhead_formula(fc.rate, fc.sessions),
            "data_ratio": data_ratio(sizes, fc.pretrain_epochs, fc.epochs_per_session),
            "pretrain_s": pre_s, "forget_s": fgt_s, "measured_ratio": fgt_s / pre_s,
            "seconds_from": pre_src if pre_src == fgt_src else f"{pre_src} / {fgt_src}"}
