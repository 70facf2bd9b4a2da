"""`--dry-run`: what a reproduce script would run and what it would cost, computed in seconds, running nothing.

It prints the resolved config as a diff against the dataclass defaults, the units per stage (total, cached, to run:
the cache is only read), the Slurm resources of each stage's job array, and a compute estimate.

The cost model: a unit's work is counted from its config, not run: images through the network in training (epochs x
images per epoch; the datasets' standard sizes from `know.datasets`) and in evaluation, and the parameters KNOWN
predicts. Forward FLOPs per image come from `torch.utils.flop_counter` on the unit's model built on the meta device
(no memory, no data); a training image costs 3 forward passes (forward + backward), an evaluated one 1. Time is
FLOPs / a measured throughput: `benchmarks/step_times.json` holds images/s measured for a model and input size on a
device kind (by `benchmarks/gpu_check.sh` on a GPU, `benchmarks/step_times.py` on this CPU); a stage whose model has
no measurement for the target device says "unmeasured" and shows FLOPs only. Segmentation and captioning units are
costed with their upstream network (the decoder is not counted), collector units with their SimpleNets.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from know.config import ExperimentCfg
from know.datasets import entry
from know.jobs import Unit, _closure, load_result, slurm_parameters

REPO = Path(__file__).resolve().parent.parent
STEP_TIMES = REPO / "benchmarks" / "step_times.json"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("model_kwargs", "per_column", "options"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(cfg: ExperimentCfg) -> list[tuple[str, object, object]]:
    """(key, default, value) of every field the profile or the command line changed."""
    new, old = flatten(dataclasses.asdict(cfg)), flatten(dataclasses.asdict(ExperimentCfg()))
    return [(k, old.get(k), v) for k, v in new.items() if _norm(old.get(k)) != _norm(v)]


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------- work per unit

def _train_size(dataset: str, cap: int | None = None, fraction: float = 1.0) -> int:
    n = entry(dataset).train_size
    n = min(n, cap) if cap else n
    return max(1, round(n * fraction))


def _session_images(fc: dict) -> tuple[int, int]:
    """(pre-training images, forgetting images) of a ForgetCfg dict."""
    d0 = _train_size(fc["dataset"], fc.get("max_images"), fc.get("data_fraction", 1.0))
    sizes = [round(d0 * fc.get("rate", 0.5) ** k) for k in range(fc.get("sessions", 5))]
    return d0 * fc.get("pretrain_epochs", 1), sum(sizes[1:]) * fc.get("epochs_per_session", 1)


def work(u: Unit) -> dict:
    """{"model": (name, kwargs, in_chans, size), "train": images, "eval": images, "params": predicted scalars}."""
    c = u.cfg
    if u.stage in ("pretrain", "forget"):
        fc = c["forget"]
        pre, sessions = _session_images(fc)
        model = (fc["model"], fc["model_kwargs"], fc.get("channels") or 3, fc["size"])
        evals = min(entry(fc["dataset"]).train_size, fc.get("eval_images") or 10 ** 9)
        return {"model": model, "train": pre if u.stage == "pretrain" else sessions,
                "eval": evals * (1 if u.stage == "pretrain" else fc.get("sessions", 5))}
    if u.stage == "transfer":
        tc, up = c["transfer"], c["upstream"]
        kw = up["model_kwargs"]
        images = _train_size(tc["dataset"], tc.get("max_images"))
        epochs = tc["probe_epochs"] + tc["finetune_epochs"]
        model = (up["model"], {k: v for k, v in kw.items() if k not in ("img_size", "in_chans", "norm")},
                 kw.get("in_chans", 3), tc.get("size") or kw.get("img_size", 32))
        evals = (tc.get("eval_images") or entry(tc["dataset"]).train_size // 5) + tc.get("val_images", 0)
        return {"model": model, "train": epochs * images, "eval": epochs * evals}
    if u.stage == "collect":
        cc = c["collect"]
        d0 = min(entry(cc["datasets"][0]).train_size, cc.get("max_images") or 10 ** 9)
        per_trial = d0 * sum(0.6 ** k for k in range(cc["sessions"]))  # E[rate] = 0.6 under U(0.3, 0.9)
        model = (cc["models"][0], cc.get("model_kwargs") or {}, cc.get("channels") or 3, cc.get("size", 32))
        trials = min(cc["group_size"], cc["trials"] - c["group"] * cc["group_size"])
        return {"model": model, "train": trials * per_trial, "eval": 0}
    return {"model": None, "train": 0, "eval": 0}


def forward_flops(model: tuple) -> float:
    """Forward FLOPs of one image through (name, kwargs, in_chans, size), counted on the meta device."""
    return _flops(model[0], json.dumps(model[1], sort_keys=True), int(model[2]), int(model[3]))


_FLOPS: dict = {}


def _flops(name: str, kwargs: str, in_chans: int, size: int) -> float:
    key = (name, kwargs, in_chans, size)
    if key not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        from know.models import create_model

        try:
            with torch.device("meta"):
                m = create_model(name, num_classes=10, in_chans=in_chans, img_size=size, **json.loads(kwargs))
                x = torch.empty(1, in_chans, size, size)
            with FlopCounterMode(display=False) as fc:
                m(x)
            _FLOPS[key] = float(fc.get_total_flops())
        except Exception:  # a model that does not build on the meta device: unknown
            _FLOPS[key] = math.nan
    return _FLOPS[key]


def model_key(name: str, kwargs: dict, size: int) -> str:
    """How benchmarks/step_times.json names a measured network: "<name> <kwargs as JSON> <size>"."""
    return f"{name} {json.dumps(kwargs, sort_keys=True)} {int(size)}"


def measured_rates(path: Path = STEP_TIMES) -> dict:
    """{device kind: {model_key: training images/s}} from benchmarks/step_times.json ({} when absent)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- the plan

def stages(units: list[Unit], cache: Path) -> dict[str, dict]:
    """Per stage: units total / cached / to run, and the summed work of those to run."""
    out: dict[str, dict] = defaultdict(lambda: {"total": 0, "cached": 0, "train_flops": 0.0, "eval_flops": 0.0,
                                                "models": {}, "units": []})
    for u in _closure(units):
        s = out[u.stage]
        s["total"] += 1
        if load_result(u.dir(cache)) is not None:
            s["cached"] += 1
            continue
        w = work(u)
        s["units"].append(u)
        if w["model"] is not None:
            f = forward_flops(w["model"])
            s["train_flops"] += 3 * f * w["train"]
            s["eval_flops"] += f * w["eval"]
            key = model_key(w["model"][0], w["model"][1], w["model"][3])
            s["models"][key] = (s["models"].get(key, (0.0, f))[0] + 3 * f * w["train"] + f * w["eval"], f)
    return dict(out)


def device_kind(cfg: ExperimentCfg, executor: str) -> str:
    """Where the units would run: "cuda" (a GPU here, or Slurm with GPUs per node), else "cpu"."""
    if executor == "slurm":
        return "cuda" if cfg.slurm.gpus_per_node else "cpu"
    return "cuda" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "cpu"


def estimate(stage: dict, kind: str, rates: dict) -> str:
    """Seconds of a stage's to-run units from measured images/s, or 'unmeasured' with its FLOPs."""
    flops = stage["train_flops"] + stage["eval_flops"]
    if not stage["units"]:
        return "-"
    if not flops or math.isnan(flops):
        return "negligible (no network pass)"
    seconds, missing = 0.0, []
    for key, (model_flops, fwd) in stage["models"].items():
        rate = rates.get(kind, {}).get(key)
        if rate is None:
            name, *_, size = key.split()
            missing.append(f"{name}@{size}")
        else:
            seconds += model_flops / (3 * fwd) / rate  # training-image equivalents / measured training images/s
    text = f"{flops / 1e15:.3g} PFLOP"
    if missing:
        return f"{text}; time unmeasured on {kind} ({', '.join(sorted(set(missing)))}: no step time measured)"
    return f"{text}; ~{seconds / 3600:.3g} {kind}-hours (measured images/s, benchmarks/step_times.json)"


def render(name: str, cfg: ExperimentCfg, units: list[Unit], cache: Path, executor: str) -> str:
    """The whole dry-run printout."""
    lines = [f"[{name}] dry run: nothing is run or written", "", "config (changed from the defaults):"]
    lines += [f"  {k} = {v!r}   (default {d!r})" for k, d, v in config_diff(cfg)]
    kind, rates = device_kind(cfg, executor), measured_rates()
    table = stages(units, cache)
    lines += ["", f"units per stage (cache {cache}; executor {executor}; device {kind}):",
              f"  {'stage':<10} {'total':>6} {'cached':>7} {'to run':>7}  compute of the units to run"]
    for stage, s in table.items():
        lines.append(f"  {stage:<10} {s['total']:>6} {s['cached']:>7} {s['total'] - s['cached']:>7}  "
                     f"{estimate(s, kind, rates)}")
    total = sum(s["train_flops"] + s["eval_flops"] for s in table.values() if not math.isnan(s["train_flops"]))
    lines.append(f"  all stages: {sum(s['total'] for s in table.values())} units, "
                 f"{sum(s['total'] - s['cached'] for s in table.values())} to run, {total / 1e15:.3g} PFLOP")
    if executor == "slurm":
        params = slurm_parameters(cfg.slurm)
        lines += ["", "Slurm: one job array per stage wave, each task with:",
                  "  " + ", ".join(f"{k}={v}" for k, v in params.items())]
        lines += [f"  {stage}: array of {s['total'] - s['cached']} task(s)" for stage, s in table.items()
                  if s["total"] > s["cached"]]
    lines += ["", "cost model: training images x 3 forward FLOPs + evaluated images x 1 (torch.utils.flop_counter "
                  "on the meta device); time only where images/s were measured for that model, size and device "
                  "(benchmarks/step_times.json)."]
    return "\n".join(lines)
