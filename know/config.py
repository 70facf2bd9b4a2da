"""Typed configuration: dataclasses, `--key=value` overrides, and the three profiles (defined only here).

An experiment (`ExperimentCfg`) nests the configs of each stage, which live beside their code
(`know.forgetting.ForgetCfg`, `know.forgetting.CollectCfg`, `know.metatrain.MetaTrainCfg`, `know.transfer.TransferCfg`)
plus `PredictCfg` and `SlurmCfg` here. Defaults are the paper's protocol; a profile is a set of dotted overrides on
top of them; the command line overrides the profile (`--forget.lr=3e-4`), after a type check, rejecting unknown keys.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from dataclasses import dataclass, field
from typing import Any

from know.errors import KnowError, UnknownName


@dataclass
class PredictCfg:
    routing: str = "official"  # official: every conv kernel -> Conv model (paper's script); 3x3: only 3x3 kernels
    norm: str = "keep"  # keep Θ0's normalisation params and running stats (our choice; see paper.md §4)
    steps: int = 3  # recurrences: x2, x4, x8 for r = 0.5 (paper)


@dataclass
class SlurmCfg:
    """Resources of one unit on Slurm; defaults fit one GPU job of the paper profile."""

    partition: str | None = None  # None: the cluster's default partition
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float = 32
    timeout_min: int = 12 * 60
    array_parallelism: int = 64  # max concurrent tasks of one job array
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None


def _forget_cfg():
    from know.forgetting import ForgetCfg
    return ForgetCfg()


def _collect_cfg():
    from know.forgetting import CollectCfg
    return CollectCfg()


def _metatrain_cfg():
    from know.metatrain import MetaTrainCfg
    return MetaTrainCfg()


def _transfer_cfg():
    from know.transfer import TransferCfg
    return TransferCfg()


def _cost_cfg():
    from know.cost import CostCfg
    return CostCfg()


def _landscape_cfg():
    from know.landscape import LandscapeCfg
    return LandscapeCfg()


@dataclass
class ExperimentCfg:
    """One table's pipeline: pre-train -> forget -> (collect -> meta-train) -> predict -> transfer, per data fraction."""

    profile: str = "paper"
    trials: int = 5  # downstream fine-tuning trials per row (paper: 5, mean ± std)
    seed: int = 0  # base seed; every unit's seed is hashed from it and the fields that identify the unit
    fractions: tuple[float, ...] = (1.0, 0.5, 0.25)  # share of the pre-training data available (T-A columns)
    data_root: str | None = None
    device: str = "auto"  # auto: cuda when available
    forget: Any = field(default_factory=_forget_cfg)
    collect: Any = field(default_factory=_collect_cfg)
    metatrain: Any = field(default_factory=_metatrain_cfg)
    predict: PredictCfg = field(default_factory=PredictCfg)
    transfer: Any = field(default_factory=_transfer_cfg)
    slurm: SlurmCfg = field(default_factory=SlurmCfg)
    cost: Any = field(default_factory=_cost_cfg)  # T-G timing (reproduce/table_cost.py)
    landscape: Any = field(default_factory=_landscape_cfg)  # figures (reproduce/figure_landscape.py, ...)


# ---------------------------------------------------------------- profiles: the only place they are defined

PROFILES: dict[str, dict[str, Any]] = {
    # Tests: tiny synthetic data and a tiny network; every stage runs, end to end in well under 2 minutes.
    "smoke": {
        "trials": 2, "fractions": (1.0, 0.5), "forget.max_images": 128,
        "forget.model": "debugnet", "forget.model_kwargs": {}, "forget.dataset": "debug",
        "forget.channels": 1, "forget.size": 16,
        "forget.pretrain_epochs": 1, "forget.epochs_per_session": 1, "forget.batch_size": 32,
        "transfer.dataset": "debug", "transfer.probe_epochs": 1, "transfer.finetune_epochs": 1,
        "transfer.batch_size": 32, "transfer.max_images": 128,
        "collect.trials": 2, "collect.sessions": 7, "collect.models": ["debugnet"], "collect.datasets": ["debug"],
        "collect.max_images": 128,
        "metatrain.epochs": 2, "metatrain.max_samples_per_kind": 4096, "metatrain.window": 5,
        "slurm.gpus_per_node": 0, "slurm.cpus_per_task": 1, "slurm.mem_gb": 2, "slurm.timeout_min": 10,
        "cost.models": ("debugnet", "simplenet"), "cost.num_classes": 4, "cost.in_chans": 1, "cost.img_size": 16,
        "cost.repeats": 1,
        "landscape.grid": 5, "landscape.bn_images": 64, "landscape.eval_images": 64,
    },
    # The offline analog on 2 CPU cores: Fashion-MNIST upstream -> MNIST-10k downstream, a narrow ResNet-18
    # (width 1/16: 4-8-16-32 channels) at the datasets' native 28x28 (no zero padding to 32: 22 % fewer FLOPs).
    # Sizes are ours, chosen from training speed so Table 1 (143 units, 117 of them fine-tune runs) fits under
    # 30 minutes on 2 cores (1 + 6 epochs measured 31 minutes, 1 + 4 epochs 24 minutes, before MNIST-10k was
    # cached as arrays; 1 + 5 then, by time alone): D0 = 6,000 upstream images (x 100/50/25 %), 1,000 downstream
    # training images, small transfer batches so the short fine-tuning still takes 192 steps, a fixed 1,000-image
    # downstream test subset. The fine-tune lr 1e-3 came from one Naive run's
    # learning curve (still rising after 5 epochs at 4e-4); all of it is the same for every row, never per method.
    "cpu": {
        "trials": 3,
        "forget.model": "resnet18_know", "forget.model_kwargs": {"width": 0.0625},
        "forget.dataset": "fashion_mnist", "forget.channels": 1, "forget.size": 28, "forget.max_images": 6000,
        "forget.pretrain_epochs": 8, "forget.epochs_per_session": 1, "forget.batch_size": 128,
        "forget.eval_images": 2000,  # Θ0 near convergence on D0, so later sessions forget rather than keep learning
        "transfer.dataset": "mnist10k", "transfer.max_images": 1000, "transfer.eval_images": 1000,
        "transfer.batch_size": 32, "transfer.probe_epochs": 1, "transfer.finetune_epochs": 5,
        "transfer.finetune_lr": 1e-3,  # ours: the paper's 4e-4 peak is for 100 epochs on 50k images
        "collect.trials": 16, "collect.sessions": 7, "collect.models": ["simplenet"],
        "collect.datasets": ["fashion_mnist", "mnist10k", "digits"], "collect.max_images": 4000,
        "metatrain.epochs": 10, "metatrain.window": 5,
        "slurm.gpus_per_node": 0, "slurm.cpus_per_task": 2, "slurm.mem_gb": 8, "slurm.timeout_min": 60,
        "landscape.grid": 15, "landscape.bn_images": 1024,
    },
    # The paper's settings (paper.md §4): CIFAR-100 -> CIFAR-10, full ResNet-18, r = 0.5, S = 5, 5 trials, 10 + 100.
    "paper": {
        "trials": 5,
        "forget.model": "resnet18_know", "forget.model_kwargs": {"width": 1.0},
        "forget.dataset": "cifar100", "forget.channels": 3, "forget.size": 32,
        "transfer.dataset": "cifar10", "transfer.probe_epochs": 10, "transfer.finetune_epochs": 100,
    },
}


def default_profile() -> str:
    """paper where a GPU or Slurm is present, else cpu."""
    try:
        import torch
        if torch.cuda.is_available():
            return "paper"
    except ImportError:
        pass
    return "paper" if shutil.which("sbatch") else "cpu"


def make_config(profile: str | None = None, overrides: dict[str, Any] | list[str] | None = None) -> ExperimentCfg:
    """Defaults, then the profile's overrides, then the user's (`{"forget.lr": 3e-4}` or `["forget.lr=3e-4"]`)."""
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise UnknownName(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    cfg = ExperimentCfg(profile=profile)
    apply_overrides(cfg, PROFILES[profile])
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    apply_overrides(cfg, overrides or {})
    return cfg


class ConfigError(KnowError):
    """A --key=value override that cannot be read as its field's type."""


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """['--lr=0.1', '--batch-size', '64', 'forget.seed=3'] -> {'lr': '0.1', 'batch_size': '64', 'forget.seed': '3'}
    (the dashes may be left out when the value is attached with '=')."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") and "=" not in arg:
            raise ConfigError(f"expected --key=value, got '{arg}'")
        key, eq, value = arg.removeprefix("--").partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"option --{key} needs a value (--{key}=VALUE)")
            value, i = argv[i + 1], i + 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def override(cfg, values: dict[str, str]):
    """A copy of dataclass `cfg` with string `values` converted to each field's declared type; unknown keys fail
    with the list of known ones."""
    names = [f.name for f in dataclasses.fields(cfg)]
    for key in values:
        if key not in names:
            raise UnknownName(f"unknown option --{key}; known: {', '.join('--' + n for n in names)}")
    return dataclasses.replace(cfg, **{k: convert(cfg, k, v) for k, v in values.items()})


def convert(cfg, key: str, raw: str, label: str | None = None):
    """`raw` (command-line text) read as the declared type of field `key` of dataclass `cfg`."""
    tp = typing.get_type_hints(type(cfg))[key]
    try:
        return _convert(raw, tp)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--{label or key}={raw}: expected {_type_name(tp)} ({e})") from None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(raw: str, tp):
    if tp is Any:  # untyped field: JSON when it looks like it, else the text
        return json.loads(raw) if raw[:1] in "[{" else raw
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(raw, inner[0])
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("not a boolean")
    if tp in (int, float, str):
        return tp(raw)
    if tp is dict or origin is dict:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise TypeError("not a JSON object")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        items = json.loads(raw) if raw.startswith("[") else [s for s in raw.split(",") if s]
        elem = args[0] if args else str
        items = [elem(i) if elem in (int, float, str) else i for i in items]
        return tuple(items) if (origin or tp) is tuple else items
    raise TypeError(f"cannot parse type {tp}")


def apply_overrides(cfg, overrides: dict[str, Any]) -> None:
    """In place: dotted keys into nested dataclasses (`{"forget.lr": "3e-4"}`); strings are converted to the
    field's type, other values are set as given; an unknown key fails with the keys of its section."""
    for dotted, value in overrides.items():
        *path, name = dotted.split(".")
        target = cfg
        for part in path:
            target = _field(target, part, dotted)
        _field(target, name, dotted)
        setattr(target, name, convert(target, name, value, dotted) if isinstance(value, str) else value)


def _field(obj, name: str, dotted: str):
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        raise UnknownName(f"unknown config key '{dotted}'; keys of {type(obj).__name__}: {', '.join(names)}")
    return getattr(obj, name)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)

