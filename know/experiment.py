"""The grid of a table as cached units: pre-train -> forget -> (collect -> meta-train) -> predict -> transfer.

A reproduce script declares its rows (`Row`: a predictor, which KNOWN weights, which recurrence steps); this module
turns rows and a config into `know.jobs.Unit`s (running them and writing results is `know.tables`). Each box below is
one unit, cached under the hash of its config and of the code its function runs, so reruns skip finished work and a
changed setting recomputes only what depends on it:

    per data fraction f:  pretrain(f) -> forget(f) -> predict(f, method) -> transfer(f, method, step, trial)
    once:                 collect(group g) ... -> metatrain        (only when a row uses KNOWN weights "ours")

Naive rows fine-tune Θ0 itself. Trial t of every row uses the same downstream seed (a paired comparison).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from know.config import CostCfg, ExperimentCfg, ForgetCfg, LandscapeCfg, TransferCfg
from know.errors import KnowError
from know.cost import hardware_id
from know.forgetting import num_groups
from know.jobs import Unit
from know.landscape import EVAL_FIELDS
from know.tasks import task_module
from know.train import seed_from

# ForgetCfg fields that do not change Θ0 (so changing them does not redo pre-training).
FORGET_ONLY = ("rate", "sessions", "epochs_per_session", "restart_from_initial")


@dataclass(frozen=True)
class Row:
    """One table row family: `method` from the predictor registry ("naive" = Θ0 itself), the KNOWN weights for
    KNOWN-like methods ("official" or "ours"), the recurrence steps to fine-tune (1 = ×2, 2 = ×4, 3 = ×8), and
    for our KNOWN the window S it is meta-trained with (it then reads the newest S sessions of the trajectory)."""

    method: str
    known: str | None = None
    steps: tuple[int, ...] = (3,)
    window: int = 5

    @property
    def name(self) -> str:
        name = f"{self.method}_{self.known}" if self.known else self.method
        return name if self.window == 5 else f"{name}_s{self.window}"

    def step_list(self) -> tuple[int, ...]:
        return (0,) if self.method == "naive" else self.steps

    @staticmethod
    def factor(step: int, rate: float) -> str:
        """The virtual data multiplier of a recurrence step: 8 for 3 steps at r = 1/2, 9 for 2 at r = 1/3."""
        return f"{(1 / rate) ** step:.3g}"


# ---------------------------------------------------------------- building the grid

@dataclass(frozen=True)
class Column:
    """One column of a table: the upstream data fraction it uses and the transfer settings it changes."""

    name: str  # "100%", a dataset, a domain
    fraction: float = 1.0
    transfer: tuple = ()  # (field, value) pairs applied to the transfer config


AXES = ("fraction", "dataset", "domain")


def columns(cfg: ExperimentCfg) -> list[Column]:
    """The table's columns along `cfg.axis` (see `ExperimentCfg`); an unknown axis or an empty one fails."""
    if cfg.axis not in AXES:
        raise KnowError(f"unknown --axis={cfg.axis}; choices: {', '.join(AXES)}")
    values = {"fraction": cfg.fractions, "dataset": cfg.datasets, "domain": cfg.domains}[cfg.axis]
    if not values:
        raise KnowError(f"the table has no columns: --{cfg.axis}s is empty")
    out = []
    for v in values:
        name = f"{v:.0%}" if cfg.axis == "fraction" else str(v)
        extra = dict(cfg.per_column.get(name, {}))
        if cfg.axis == "dataset":
            extra["dataset"] = v
        elif cfg.axis == "domain":
            extra["target_domain"] = v
        fraction = float(v) if cfg.axis == "fraction" else cfg.fractions[0]
        out.append(Column(name, fraction, tuple(sorted(extra.items()))))
    return out


def _limits(cfg: ExperimentCfg, section) -> dict:
    """The experiment-wide settings every stage config takes: where data lives, the device, the rehearsal caps."""
    shared = {"data_root": cfg.data_root, "device": cfg.device, "amp": cfg.amp, "compile": cfg.compile,
              "limit_steps": cfg.limit_steps}
    out = {k: v for k, v in shared.items() if hasattr(section, k)}
    for name in ("batch_size", "eval_batch_size"):
        if cfg.limit_batch and hasattr(section, name):
            out[name] = min(getattr(section, name), cfg.limit_batch)
    return out


def forget_cfg(cfg: ExperimentCfg, fraction: float) -> ForgetCfg:
    """The forgetting run of a data fraction, with the experiment-wide settings."""
    return dataclasses.replace(cfg.forget, data_fraction=fraction, **_limits(cfg, cfg.forget))


def transfer_cfg(cfg: ExperimentCfg, column: Column) -> TransferCfg:
    """The downstream protocol of a column, with the experiment-wide settings."""
    try:
        return dataclasses.replace(cfg.transfer, **_limits(cfg, cfg.transfer), **dict(column.transfer))
    except TypeError as e:
        raise KnowError(f"--per_column of {column.name}: {e}") from None


def pretrain_unit(cfg: ExperimentCfg, fraction: float) -> Unit:
    fc = {k: v for k, v in asdict(forget_cfg(cfg, fraction)).items() if k not in FORGET_ONLY}
    return Unit("pretrain", "know.forgetting:unit_pretrain", {"forget": fc}, label=f"pretrain f={fraction:g}")


def forget_unit(cfg: ExperimentCfg, fraction: float) -> Unit:
    return Unit("forget", "know.forgetting:unit_forget", {"forget": asdict(forget_cfg(cfg, fraction))},
                deps={"pretrain": pretrain_unit(cfg, fraction)}, label=f"forget f={fraction:g}")


def metatrain_unit(cfg: ExperimentCfg, window: int = 5) -> Unit:
    cc = dataclasses.replace(cfg.collect, **_limits(cfg, cfg.collect))
    groups = {f"collect{g}": Unit("collect", "know.forgetting:unit_collect", {"collect": asdict(cc), "group": g},
                                  label=f"collect group {g}")
              for g in range(num_groups(cc))}
    mc = dataclasses.replace(cfg.metatrain, window=window, **_limits(cfg, cfg.metatrain))
    return Unit("metatrain", "know.metatrain:unit_metatrain", {"metatrain": asdict(mc)}, deps=groups,
                label=f"meta-train KNOWN (window {window})")


def predict_unit(cfg: ExperimentCfg, fraction: float, row: Row) -> Unit:
    deps = {"trajectory": forget_unit(cfg, fraction)}
    if row.known == "ours":
        deps["known"] = metatrain_unit(cfg, row.window)
    return Unit("predict", "know.predict:unit_predict",
                {"method": row.method, "known": row.known, "steps": max(row.steps), "predict": asdict(cfg.predict)},
                deps=deps, label=f"predict {row.name} f={fraction:g}")


def trial_seed(cfg: ExperimentCfg, fraction: float, trial: int) -> int:
    """The downstream seed of trial `trial`: shared by every row (paired comparisons)."""
    return seed_from(cfg.seed, "transfer", fraction, trial)


def upstream_of(cfg: ExperimentCfg, fraction: float) -> dict:
    """What the transfer unit needs to rebuild the upstream model: architecture, kwargs and what travels with the
    weights about their input (channels, size, normalisation: the downstream data is adapted to them)."""
    fc = forget_cfg(cfg, fraction)
    kwargs = {**fc.model_kwargs, "img_size": fc.size, "norm": fc.norm}
    if fc.channels:
        kwargs["in_chans"] = fc.channels
    return {"model": fc.model, "model_kwargs": kwargs}


def transfer_units(cfg: ExperimentCfg, rows: list[Row]) -> list[tuple[dict, Unit]]:
    """(run identity, unit) for every fine-tune run of the table: columns x rows x steps x trials."""
    out = []
    for col in columns(cfg):
        f, tc = col.fraction, transfer_cfg(cfg, col)
        upstream = upstream_of(cfg, f)
        for row in rows:
            source = pretrain_unit(cfg, f) if row.method == "naive" else predict_unit(cfg, f, row)
            for step in row.step_list():
                for trial in range(cfg.trials):
                    seed = trial_seed(cfg, f, trial)
                    unit = Unit("transfer", f"{task_module(tc.task)}:unit_transfer",
                                {"transfer": asdict(tc), "upstream": upstream, "step": step, "seed": seed},
                                deps={"weights": source},
                                label=f"transfer {row.name} x{row.factor(step, cfg.forget.rate)} {col.name} "
                                      f"trial {trial}")
                    out.append(({"method": row.name, "steps": step, "column": col.name, "fraction": f,
                                 "trial": trial, "seed": seed}, unit))
    return out


def method_row(method: str, steps: int = 3):
    """Table 1's `Row` of a method name (its `Row.name`), predicting `steps` recurrences."""
    if method.startswith("known_"):  # known_official, known_ours, known_ours_s3 (window 3)
        known, _, window = method.removeprefix("known_").partition("_s")
        return Row("known", known=known, steps=tuple(range(1, steps + 1)), window=int(window or 5))
    return Row(method, steps=(steps,))


# ---------------------------------------------------------------- figures and T-G

def _point_deps(cfg, fraction: float, methods, steps: int | None = None) -> dict[str, Unit]:
    deps = {"trajectory": forget_unit(cfg, fraction)}
    deps.update({m: predict_unit(cfg, fraction, method_row(m, steps or cfg.predict.steps)) for m in methods})
    return deps


def landscape_cfg(cfg: ExperimentCfg) -> LandscapeCfg:
    """The figures' evaluation settings, with the experiment-wide rehearsal cap."""
    return dataclasses.replace(cfg.landscape, **_limits(cfg, cfg.landscape))


def cost_cfg(cfg: ExperimentCfg) -> CostCfg:
    """T-G's timing settings, with the experiment-wide device and rehearsal cap."""
    return dataclasses.replace(cfg.cost, **_limits(cfg, cfg.cost))


def landscape_unit(cfg, lc: LandscapeCfg) -> Unit:
    deps = _point_deps(cfg, lc.fraction, lc.methods)
    return Unit("landscape", "know.landscape:unit_landscape",
                {"forget": deps["trajectory"].cfg["forget"], "landscape": asdict(lc)}, deps=deps,
                label=f"landscape f={lc.fraction:g} ({lc.grid}x{lc.grid})")


def upstream_unit(cfg, lc: LandscapeCfg, fraction: float) -> Unit:
    deps = _point_deps(cfg, fraction, lc.methods)
    return Unit("upstream", "know.landscape:unit_upstream",
                {"forget": deps["trajectory"].cfg["forget"], "eval": {k: getattr(lc, k) for k in EVAL_FIELDS}},
                deps=deps, label=f"upstream accuracy f={fraction:g}")


def cost_units(c: CostCfg) -> list[Unit]:
    """One timing unit per model, keyed by the hardware it runs on."""
    hw = hardware_id(c.device)
    return [Unit("cost", "know.cost:unit_cost", {"model": m, "cost": asdict(dataclasses.replace(c, models=(m,))),
                                                "hardware": hw},
                 label=f"time prediction {m}") for m in c.models]


def scale_units(cfg: ExperimentCfg) -> list[tuple[dict, Unit]]:
    """(network identity, unit) of figure_scale: every network of `cfg.scale` trained with its recipe, its
    trajectory predicted by every method, and measured (know/scale.py)."""
    sc = cfg.scale
    nets = [("resnet18_know", {"width": w}, w) for w in sc.widths] + ([("simplenet", {}, None)] if sc.simplenet else [])
    out = []
    for model, kwargs, width in nets:
        sub = dataclasses.replace(cfg, forget=dataclasses.replace(
            cfg.forget, model=model, model_kwargs=kwargs, dataset=sc.dataset, size=sc.size, channels=1,
            max_images=sc.max_images, pretrain_epochs=sc.pretrain_epochs, epochs_per_session=sc.epochs_per_session))
        deps = _point_deps(sub, 1.0, sc.methods, sc.steps)
        name = model if width is None else f"{model} x{width:g}"
        unit = Unit("scale", "know.scale:unit_scale",
                    {"forget": deps["trajectory"].cfg["forget"], "network": name, "width": width,
                     "methods": list(sc.methods), "eval": asdict(landscape_cfg(cfg))}, deps=deps,
                    label=f"scale {name}")
        out.append(({"network": name, "width": width}, unit))
    return out
