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

import dataclasses
import importlib.util
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from know.jobs import Unit

CODE = ("know.cost", "know.predict", "know.known", "know.baselines", "know.trajectory", "know.models")


@dataclass
class CostCfg:
    """Defaults: the paper's T-G (ResNet-18 of the main protocol) plus the issue's ViT-S and PVTv2-b2."""

    models: tuple[str, ...] = ("resnet18_know", "timm:vit_small_patch16_224", "timm:pvt_v2_b2")
    model_kwargs: dict = field(default_factory=dict)  # model name -> kwargs (resnet18_know: width 1 by default)
    num_classes: int = 100  # main protocol's CIFAR-100 head: 11.23 M params (≈ 3.01 s / 2.67e-7 s per param)
    in_chans: int = 3
    img_size: int = 32  # our choice for ViT-S / PVTv2 (paper unknown; their parameter count barely depends on it)
    sessions: int = 5  # KNOWN's window S
    steps: int = 3  # ×2, ×4, ×8 (paper's main setting)
    repeats: int = 3  # timed runs after one warm-up; the best is reported
    known: str = "official"
    routing: str = "official"
    device: str = "auto"  # auto: cuda when available
    threads: int | None = None  # CPU threads (None: every core this process may use)
    seed: int = 0
    fraction: float = 1.0  # whose trajectory the overhead is measured on (T-A's 100 % column)




# ---------------------------------------------------------------- measuring

def hardware_id(device: str = "auto") -> str:
    """The device a timing runs on, in words: GPU name, or CPU model and core count."""
    from know.train import resolve_device

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
    from know.models import create_model
    from know.trajectory import Trajectory, param_kinds

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
    from know.predict import route

    return sum(p[0].numel() for n, p in traj.params.items() if route(traj.kinds[n], p.shape[1:], routing))


def time_prediction(model: str, c: CostCfg) -> dict:
    """Seconds for `c.steps` recurrences and for one, over every parameter of `model` (see the module docstring)."""
    from know.predict import create_predictor, load_kernel, predict
    from know.train import resolve_device

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


def run_cost(cfg: dict, out: Path, deps: dict) -> dict:
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


# ---------------------------------------------------------------- the table

def cost_units(c: CostCfg) -> list[Unit]:
    """One timing unit per model, keyed by the hardware it runs on."""
    hw = hardware_id(c.device)
    return [Unit("cost", "know.cost:run_cost", {"model": m, "cost": asdict(dataclasses.replace(c, models=(m,))),
                                                "hardware": hw},
                 code=CODE, label=f"time prediction {m}") for m in c.models]


def cost_table(cfg, runner, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Run (or reuse) the timing units and Table 1's pre-train/forget units; write the CSV, figure; print."""
    c: CostCfg = cfg.cost
    from know.experiment import forget_unit, pretrain_unit
    from know.drivers import REPO, provenance
    from know.plots import plot_cost
    from know.report import read_paper_csv, render_cost
    from know.results import write_results

    t0 = time.time()
    timing = cost_units(c)
    pre, fgt = pretrain_unit(cfg, c.fraction), forget_unit(cfg, c.fraction)
    results = runner.run([pre, fgt])
    for u in timing:  # one at a time: concurrent timings would share the cores
        results.update(runner.run([u]))
    rows = [{"part": "prediction", **results[u.key]["value"], "unit_wall_s": results[u.key].get("wall_s")}
            for u in timing]
    rows.append({**overhead_row(cfg, results[pre.key], results[fgt.key]), "fraction": c.fraction})
    csv = Path(results_dir) / f"table_cost_{cfg.profile}.csv"
    keras = "not timed: TensorFlow is not installed" if importlib.util.find_spec("tensorflow") is None else \
        "not timed: no Keras timing path yet"
    write_results(rows, csv, provenance("table_cost", cfg, runner, t0, device=hardware_id(c.device),
                                        cost=asdict(c), official_keras=keras))
    fig = plot_cost(csv, Path(figures_dir) / f"{csv.stem}.png")
    print(f"\ntable_cost ({cfg.profile}): KNOW prediction time, ours vs the paper's T-G ('?' = unknown)\n")
    print(render_cost(pd_read(csv), read_paper_csv(REPO / "paper" / "table_cost.csv"), markdown=False))
    print(f"official Keras KNOWN: {keras}")
    return [csv, csv.with_suffix(".meta.json"), fig]


def pd_read(csv: Path):
    import pandas as pd

    return pd.read_csv(csv)
