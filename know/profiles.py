"""The three profiles, defined only here: smoke (tests), cpu (the offline analog), paper (the paper's settings).

A profile is a set of dotted overrides (`"forget.lr": 3e-4`) on top of the dataclass defaults of `know.config`;
the command line overrides the profile. Units never import this module, so editing a profile recomputes only the
units whose configuration it changes (their keys hold the resolved config), never the others.
"""
from __future__ import annotations

import shutil
from typing import Any

from know.config import ExperimentCfg, apply_overrides, parse_overrides
from know.errors import UnknownName

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
    # The paper's settings (docs/method.md §4): CIFAR-100 -> CIFAR-10, full ResNet-18, r = 0.5, S = 5, 5 trials, 10 + 100.
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
