"""Typed configuration: every stage's dataclass, and `--key=value` overrides of them.

An experiment (`ExperimentCfg`) nests the configs of each stage: `ForgetCfg` (pre-training and the forgetting
trajectory), `CollectCfg` (the meta-dataset), `MetaTrainCfg` (our KNOWN), `PredictCfg`, `TransferCfg` (downstream),
`CostCfg` (T-G), `LandscapeCfg` (figures) and `SlurmCfg`. Defaults are the paper's protocol (docs/method.md); a
profile (`know.profiles`, the one place they are defined) is a set of dotted overrides on top of them; the command
line overrides the profile (`--forget.lr=3e-4`), after a type check, rejecting unknown keys.

This module imports nothing of the stages, so every stage can import it.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from know.errors import KnowError, UnknownName

@dataclass
class ForgetCfg:
    """One forgetting run. Defaults: the paper's main protocol (docs/method.md §4, official CIFAR-100 script)."""

    task: str = "classification"  # the upstream objective (know.tasks.OBJECTIVES): classification, segmentation
    model: str = "resnet18_know"  # §4: ResNet-18 variant (registry name)
    model_kwargs: dict = field(default_factory=dict)  # e.g. {"width": 0.25} for a narrow resnet18_know
    init: str = "random"  # Θ's start: "random" (seeded), "timm" (timm's pretrained weights) or a state_dict file
    dataset: str = "cifar100"  # §4: upstream CIFAR-100
    data_root: str | None = None  # None: $KNOW_DATA or ~/.cache/know/data
    channels: int | None = None  # None: the dataset's own channel count
    size: int = 32  # input side length in pixels (§4: 32x32)
    norm: str = "pixel_mean"  # §4: per-pixel mean subtraction; "imagenet" for timm's pretrained weights
    data_fraction: float = 1.0  # share of the train split forming D0 (the T-A columns 100/50/25 %)
    max_images: int | None = None  # our choice: optional cap on |D0| for small profiles (None: no cap)
    rate: float = 0.5  # §1/§4: |Dk| = r^k |D0|
    sessions: int = 5  # §1: S = 5 checkpoints Θ(S-1) .. Θ0
    pretrain_epochs: int = 1  # official sample: 1 epoch on D0; the paper's real schedule is unknown (§7)
    epochs_per_session: int = 1  # official sample: 1 epoch per session; paper unknown (§7)
    optimizer: str = "adam"  # §4: Adam
    lr: float = 1e-3  # §4: Adam 1e-3
    batch_size: int = 128  # §4
    augment: bool = True  # §4: rotation 10°, shift 0.15, zoom 0.3, nearest fill
    restart_from_initial: bool = False  # True: the official meta-dataset sample's variant (§3)
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    eval_images: int | None = None  # our choice: test images per accuracy check (None: the whole test split)
    limit_steps: int | None = None  # rehearsal only: optimizer steps per session and batches per evaluation
    amp: bool = True  # bf16 autocast on CUDA (no effect on a CPU)
    compile: bool = False  # torch.compile the model (speed only)
    eval_batch_size: int = 1024  # speed only


@dataclass
class CollectCfg:
    """A meta-dataset of forgetting trajectories sampled like the official sample script (docs/method.md §3)."""

    models: list[str] = field(default_factory=lambda: ["simplenet"])  # §3: the sample's SimpleNet
    datasets: list[str] = field(default_factory=lambda: ["fashion_mnist", "mnist10k", "digits"])  # our choice:
    # the offline analogs of the paper's Fashion-MNIST / MNIST / CIFAR-10 (CIFAR needs a download)
    model_kwargs: dict = field(default_factory=dict)
    data_root: str | None = None
    trials: int = 48  # our choice (the paper's count is unknown, §3)
    group_size: int = 16  # our choice: trials stacked per group (share architecture, dataset, rate, batch size)
    sessions: int = 7  # §3: 7 sessions per trajectory
    rate_min: float = 0.3  # §3: rate ~ U(0.3, 0.9)
    rate_max: float = 0.9
    lr_min: float = 1e-5  # §3: lr ~ U(1e-5, 4e-3)
    lr_max: float = 4e-3
    batch_min: int = 32  # §3: batch ~ int(U(32, |D0| r^(S-1)))
    batch_max: int | None = 1024  # our choice: caps the upper end for memory (K x batch images per step)
    pretrain_epochs: int = 1  # §3: one epoch per session, D0 included
    epochs_per_session: int = 1  # §3
    max_images: int | None = None  # our choice: optional cap on |D0| (small profiles, benchmarks)
    restart_from_initial: bool = False  # paper: sequential; True = the official sample's restarts
    augment: bool = True  # §3: the sample's augmentation
    eval_images: int | None = 1000  # our choice: test images per accuracy check (None: whole test split)
    seed: int = 0
    device: str = "auto"
    channels: int | None = None
    size: int = 32
    stacked: bool = True  # False: one trial at a time (the benchmark's baseline)
    limit_steps: int | None = None  # rehearsal only: optimizer steps per session
    backend: str = "auto"  # stacked training: auto | lanes (C kernels) | wide (grouped convs) | vmap, see train.Stack


@dataclass
class MetaTrainCfg:
    """Meta-training settings. The paper gives only the loss and the optimiser; the rest is our choice."""

    window: int = 5  # snapshots KNOWN reads (paper: S = 5); trajectories need window + 1 sessions
    epochs: int = 20  # our choice: passes over the (subsampled) samples, per kind
    batch_size: int = 4096  # our choice: rows per Adam step
    lr: float = 1e-3  # Adam learning rate (official compile: Adam(1e-3), loss 'mae')
    max_samples_per_kind: int = 2_000_000  # our choice: training rows per kind (seeded subsample; bounds memory)
    max_val_samples_per_kind: int = 500_000  # our choice: validation rows per kind
    val_fraction: float = 0.2  # our choice: share of whole trajectories held out (at least 1 if there are 2+)
    l1_kernel: float = 1e-6  # official KNOWN.py: L1 on lift/project kernels, added to the loss
    l1_bias: float = 0.1  # official KNOWN.py: L1 on lift/project biases, added to the loss
    seed: int = 0
    device: str = "auto"  # "auto" = cuda if available, else cpu
    kinds: tuple[str, ...] = ("conv", "fc", "bias")  # KNOWN models to train
    routing: str = "official"  # parameters -> models, as in prediction (know.routes.ROUTINGS); norm: not trained
    limit_steps: int | None = None  # rehearsal only: batches per kind and epoch
    progress: bool = True  # tqdm bar



@dataclass
class TransferCfg:
    """The downstream protocol. Defaults: docs/method.md §4 (CIFAR-100 -> CIFAR-10, official script): a probe
    phase (only normalisation layers and the new head train) then a fine-tune phase (everything trains).

    `task` picks the kind of downstream problem (`know.tasks.TASKS`): classification, domain_generalization,
    segmentation or captioning; `options` holds the task's own settings (checked by its options dataclass)."""

    task: str = "classification"  # know.tasks.TASKS
    dataset: str = "cifar10"  # §4: downstream CIFAR-10
    data_root: str | None = None  # None: $KNOW_DATA or ~/.cache/know/data
    probe_epochs: int = 10  # §4 phase 1
    probe_lr: float = 1e-3  # §4 phase 1: Adam 1e-3
    finetune_epochs: int = 100  # §4 phase 2 (E in the cosine)
    finetune_lr: float = 4e-4  # §4 phase 2: peak of lr(e) = 0.5 * 4e-4 * (1 + cos(pi e / E))
    schedule: str = "cosine"  # §4: cosine over the fine-tune phase; or warmup_flat_cosine, warmup_constant
    warmup_epochs: int = 0  # warmup_flat_cosine: linear warm-up to finetune_lr ...
    flat_epochs: int = 0  # ... then flat ...
    min_lr: float = 0.0  # ... then cosine down to min_lr
    batch_size: int = 128  # §4, both phases
    optimizer: str = "adam"  # §4 (sgd: momentum 0.9)
    weight_decay: float = 0.0  # §4: none
    augment: bool = True  # §4: the same augmentation as upstream
    size: int | None = None  # input side (None: the upstream model's img_size, which travels with its weights)
    native_size: bool = False  # keep the dataset's own size (non-square sets on size-agnostic models)
    store_size: int | None = None  # keep images at this side in memory and resize each batch to `size` (CIFAR -> 224)
    max_images: int | None = None  # our choice: downstream train images (a fixed seeded subset; None: all)
    val_images: int = 0  # our choice: images carved from the train split for validation (fixed; 0: none)
    select: str = "last"  # the epoch a table reports: "last", or "best_val" (best validation metric)
    test_each_epoch: bool = False  # evaluate the test split after every epoch (learning curves), not only at the end
    eval_images: int | None = None  # our choice: test images per epoch (None: the whole test split)
    target_domain: str | None = None  # domain_generalization: the held-out domain (tested on, never trained on)
    options: dict = field(default_factory=dict)  # the task's own settings (see its options dataclass)
    early_stop: int = 0  # stop a phase after this many epochs without a better validation metric (0: never)
    limit_steps: int | None = None  # rehearsal only: optimizer steps per phase and batches per evaluation
    amp: bool = True  # bf16 autocast on CUDA (no effect on a CPU)
    compile: bool = False  # torch.compile the model (speed only)
    device: str = "auto"
    eval_batch_size: int = 1024  # speed only


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
    limit_steps: int | None = None  # rehearsal only: one timed run of one recurrence


@dataclass
class LandscapeCfg:
    """Defaults: our choices for the paper profile (the paper's figure states none of them)."""

    grid: int = 21  # lattice points per axis
    margin: float = 0.3  # share of the points' extent added on each side of the lattice
    fit_on: str = "all"  # "all": PCA of trajectory + predictions; "trajectory": of Θ(S−1) .. Θ0 only
    methods: tuple[str, ...] = ("known_official", "taskvector")  # Table 1 rows whose predictions are drawn
    bn: str = "recalibrate"  # "recalibrate" | "keep" (see the module docstring)
    bn_images: int = 2048  # D0 images per BN re-estimate
    eval_images: int | None = None  # upstream test images per accuracy (None: the forget config's eval_images)
    fraction: float = 1.0  # the landscape is drawn on this data fraction's trajectory
    limit_steps: int | None = None  # rehearsal only: a limit_steps + 1 lattice, limit_steps batches per evaluation


@dataclass
class ScaleCfg:
    """figure_scale (know/scale.py): networks trained with one small recipe, so that their weights and the
    predictors' steps compare. Ours: Fashion-MNIST at 16x16 (width 1 is slow on a CPU), 3,000 images, 4 epochs."""

    widths: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.3, 0.5, 1.0)  # resnet18_know widths (0.3: the cpu profile's)
    simplenet: bool = True  # add SimpleNet, the meta-dataset's network: KNOWN's own weight range
    dataset: str = "fashion_mnist"
    size: int = 16
    max_images: int = 3000
    pretrain_epochs: int = 4
    epochs_per_session: int = 1
    methods: tuple[str, ...] = ("known_official", "known_ours", "wnn", "taskvector", "logfit")
    steps: int = 3  # x2, x4, x8


@dataclass
class PredictCfg:
    routing: str = "official"  # official: every conv kernel -> Conv model (paper's script); 3x3: only 3x3 kernels
    norm: str = "keep"  # keep Θ0's normalisation params and running stats (our choice; see docs/method.md §4)
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


@dataclass
class ExperimentCfg:
    """One table's pipeline: pre-train -> forget -> (collect -> meta-train) -> predict -> transfer, per column.

    The table's columns run along `axis`: "fraction" (T-A: the share of pre-training data, `fractions`), "dataset"
    (T-B: downstream datasets, `datasets`) or "domain" (T-C: the held-out domain, `domains`); `per_column` adds
    transfer settings for one column ({"digits": {"max_images": 1000}}). `limit_steps` / `limit_batch` cap every
    phase's optimizer steps and every batch size (the full-size rehearsal of the paper path; never for results).
    `amp` (bf16 autocast) acts on CUDA only; `compile` (torch.compile) anywhere it is set."""

    profile: str = "paper"
    trials: int = 5  # downstream fine-tuning trials per row (paper: 5, mean ± std)
    seed: int = 0  # base seed; every unit's seed is hashed from it and the fields that identify the unit
    axis: str = "fraction"  # what the columns vary: fraction | dataset | domain
    fractions: tuple[float, ...] = (1.0, 0.5, 0.25)  # share of the pre-training data available (T-A columns)
    datasets: tuple[str, ...] = ()  # axis "dataset": the downstream datasets (T-B)
    domains: tuple[str, ...] = ()  # axis "domain": the held-out domains (T-C)
    per_column: dict = field(default_factory=dict)  # column -> transfer overrides
    data_root: str | None = None
    device: str = "auto"  # auto: cuda when available
    amp: bool = True  # bf16 autocast on CUDA (no effect on a CPU)
    compile: bool = False  # torch.compile the trained models (pre-training, sessions, transfer)
    limit_steps: int | None = None  # rehearsal: optimizer steps per phase, batches per evaluation
    limit_batch: int | None = None  # rehearsal: the largest batch of any stage
    forget: ForgetCfg = field(default_factory=ForgetCfg)
    collect: CollectCfg = field(default_factory=CollectCfg)
    metatrain: MetaTrainCfg = field(default_factory=MetaTrainCfg)
    predict: PredictCfg = field(default_factory=PredictCfg)
    transfer: TransferCfg = field(default_factory=TransferCfg)
    slurm: SlurmCfg = field(default_factory=SlurmCfg)
    cost: CostCfg = field(default_factory=CostCfg)  # T-G timing (reproduce/table_cost.py)
    landscape: LandscapeCfg = field(default_factory=LandscapeCfg)  # figures (reproduce/figure_landscape.py, ...)
    scale: ScaleCfg = field(default_factory=ScaleCfg)  # reproduce/figure_scale.py


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

