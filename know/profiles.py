"""The three profiles, defined only here: smoke (tests), cpu (the offline analog), paper (the paper's settings).

A profile is a set of dotted overrides (`"forget.lr": 3e-4`) on top of the dataclass defaults of `know.config`:
`PROFILES` holds T-A's (shared by T-F, T-G and the figures), `TABLES` what each other table changes on top of it.
The command line overrides the profile. Units never import this module, so editing a profile recomputes only the
units whose configuration it changes (their keys hold the resolved config), never the others. Tables that share an
upstream (T-B, T-C and T-E share the PVTv2 trajectory) take the same `forget.*` dict, so they share its units.

`choose_profile()` picks the default from the resources: paper where a GPU can be had (a CUDA device here, or a
Slurm partition with GPU gres), cpu otherwise, and says why.
"""
from __future__ import annotations

import shutil
import subprocess
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
        "scale.dataset": "debug", "scale.widths": (0.0625,), "scale.max_images": 128, "scale.pretrain_epochs": 1,
    },
    # The offline analog on 2 CPU cores (docs/cpu_profile.md: the design and the pilot measurements behind it).
    # A width-0.3 ResNet-18 (conv-weight std within 2x of width 1: in the official KNOWN's range) at 16x16 on
    # 12,000 Fashion-MNIST images; downstream 1,000 MNIST images with a 1,000-image validation split, trained until
    # the last epoch adds < 0.3 points (pilot: +0.1), 5 trials.
    "cpu": {
        "trials": 5,
        "forget.model": "resnet18_know", "forget.model_kwargs": {"width": 0.3},
        "forget.dataset": "fashion_mnist", "forget.channels": 1, "forget.size": 16, "forget.max_images": 12000,
        "forget.pretrain_epochs": 8, "forget.epochs_per_session": 1, "forget.batch_size": 128,
        "forget.eval_images": 2000,
        "transfer.dataset": "mnist10k", "transfer.max_images": 1000, "transfer.val_images": 1000,
        "transfer.eval_images": None, "transfer.batch_size": 8, "transfer.probe_epochs": 1,
        "transfer.finetune_epochs": 10, "transfer.finetune_lr": 1e-3,
        "collect.trials": 16, "collect.sessions": 7, "collect.models": ["simplenet"],
        "collect.datasets": ["fashion_mnist", "mnist10k", "digits"], "collect.max_images": 4000,
        "metatrain.epochs": 10, "metatrain.window": 5,
        "slurm.gpus_per_node": 0, "slurm.cpus_per_task": 2, "slurm.mem_gb": 8, "slurm.timeout_min": 60,
        "landscape.grid": 15, "landscape.bn_images": 1024,
    },
    # The paper's settings (docs/method.md §4): CIFAR-100 -> CIFAR-10, full ResNet-18, r = 0.5, S = 5, 5 trials,
    # 10 + 100 epochs; one GPU per unit.
    "paper": {
        "trials": 5,
        "forget.model": "resnet18_know", "forget.model_kwargs": {"width": 1.0},
        "forget.dataset": "cifar100", "forget.channels": 3, "forget.size": 32,
        "transfer.dataset": "cifar10", "transfer.probe_epochs": 10, "transfer.finetune_epochs": 100,
    },
}

# ---------------------------------------------------------------- the PVTv2 upstream (T-B, T-C, T-E share it)
PVT_NANO = {"embed_dims": [16, 32, 64, 128], "num_heads": [1, 2, 4, 8]}  # timm pvt_v2_b0 narrowed: 0.77 M params
PVT_UPSTREAM = {
    "smoke": {"forget.model": "timm:pvt_v2_b0", "forget.model_kwargs": {**PVT_NANO, "depths": [1, 1, 1, 1]},
              "forget.dataset": "debug", "forget.channels": 3, "forget.size": 32, "forget.max_images": 243,
              "forget.rate": 1 / 3, "forget.pretrain_epochs": 1, "forget.batch_size": 32},
    # our choices: Fashion-MNIST train as the offline "ImageNet", the pvt-nano from scratch at 32x32 (PVTv2 needs
    # sides >= 32), 3 channels so that RGB downstream sets (canvases) fit; r = 1/3 as the paper's T-B..T-E
    "cpu": {"forget.model": "timm:pvt_v2_b0", "forget.model_kwargs": PVT_NANO, "forget.dataset": "fashion_mnist",
            "forget.channels": 3, "forget.size": 32, "forget.max_images": 20000, "forget.rate": 1 / 3,
            "forget.pretrain_epochs": 10, "forget.epochs_per_session": 1, "forget.batch_size": 128,
            "forget.eval_images": 2000},
    # docs/method.md §8: pvt_v2_b0 (the authors' earlier PVTv2 code; b2 = "~25M parameters" is the other reading:
    # --forget.model=timm:pvt_v2_b2), its ImageNet weights as Θ0, sessions on nested ImageNet subsets, r = 1/3, S = 5.
    # Forgetting optimiser: unknown; ours: Adam 1e-4 for one epoch per session (1e-3 would wipe pretrained weights).
    "paper": {"forget.model": "timm:pvt_v2_b0", "forget.model_kwargs": {}, "forget.init": "timm",
              "forget.dataset": "imagenet", "forget.channels": 3, "forget.size": 224, "forget.norm": "imagenet",
              "forget.rate": 1 / 3, "forget.pretrain_epochs": 0, "forget.epochs_per_session": 1,
              "forget.lr": 1e-4, "forget.batch_size": 128, "forget.eval_images": 10000},
}

# ---------------------------------------------------------------- the DeepLabV3+ upstream (T-D)
DEEPLAB_CPU = {"encoder_name": "tu-resnet18", "encoder_output_stride": 16, "decoder_channels": 32,
               "decoder_atrous_rates": [1, 2, 3], "decoder_aspp_separable": False, "channels": [16, 32, 64, 128]}
DEEPLAB_PAPER = {"encoder_name": "tu-resnet50", "encoder_output_stride": 16, "decoder_channels": 256,
                 "decoder_atrous_rates": [6, 12, 18], "decoder_aspp_separable": False}  # docs/method.md §8
SEGMENTATION = {"axis": "fraction", "fractions": (1.0,), "transfer.task": "segmentation"}
CAPTIONING = {"axis": "fraction", "fractions": (1.0,), "transfer.task": "captioning", "transfer.probe_epochs": 0,
              "transfer.augment": False, "transfer.select": "best_val"}

TABLES: dict[str, dict[str, dict[str, Any]]] = {
    "table_pvtv2": {
        "smoke": {**PVT_UPSTREAM["smoke"], "axis": "dataset", "datasets": ("debug",), "fractions": (1.0,)},
        # piloted on Naive's validation curves (docs/cpu_profile.md, pilots B0-B2): 10 epochs stopped on the rising
        # part (two-digit MNIST at 61 %); 20 epochs plateau; two-digit MNIST's 100 classes need 4,000 images
        "cpu": {**PVT_UPSTREAM["cpu"], "axis": "dataset", "fractions": (1.0,), "trials": 5,
                "datasets": ("mnist10k", "two_digit_mnist", "digits"),
                "transfer.probe_epochs": 1, "transfer.finetune_epochs": 20, "transfer.finetune_lr": 1e-3,
                "transfer.batch_size": 64, "transfer.max_images": 2000, "transfer.val_images": 500,
                "per_column": {"two_digit_mnist": {"native_size": True, "max_images": 4000}}},
        # the authors' PVTv2 recipe (docs/method.md §8): SGD 0.9, batch 128, 45 epochs: 5 warm-up, 20 flat at
        # 2.5e-3, 20 cosine to 1e-4; images resized to 224 (CIFAR stored 32x32, TinyImageNet 64x64: resized per batch)
        "paper": {**PVT_UPSTREAM["paper"], "axis": "dataset", "fractions": (1.0,),
                  "datasets": ("cifar100", "tinyimagenet", "stanford_cars", "cub200", "flowers102"),
                  "transfer.probe_epochs": 0, "transfer.finetune_epochs": 45, "transfer.optimizer": "sgd",
                  "transfer.schedule": "warmup_flat_cosine", "transfer.warmup_epochs": 5,
                  "transfer.flat_epochs": 20, "transfer.finetune_lr": 2.5e-3, "transfer.min_lr": 1e-4,
                  "transfer.batch_size": 128,
                  "per_column": {"cifar100": {"store_size": 32}, "tinyimagenet": {"store_size": 64}}},
    },
    "table_pacs": {
        "smoke": {**PVT_UPSTREAM["smoke"], "axis": "domain", "fractions": (1.0,),
                  "transfer.task": "domain_generalization", "transfer.dataset": "styles",
                  "domains": ("photo", "sketch"), "transfer.max_images": 96, "transfer.eval_images": 64,
                  "transfer.select": "best_val"},
        # piloted on Naive's training-domain validation (docs/cpu_profile.md, pilots C0-C1): 1,000 images and 10
        # epochs were still climbing; 2,000 images and 20 epochs plateau
        "cpu": {**PVT_UPSTREAM["cpu"], "axis": "domain", "fractions": (1.0,), "trials": 5,
                "transfer.task": "domain_generalization", "transfer.dataset": "styles",
                "domains": ("photo", "sketch", "cartoon", "art_painting"), "transfer.select": "best_val",
                "transfer.probe_epochs": 1, "transfer.finetune_epochs": 20, "transfer.finetune_lr": 1e-3,
                "transfer.batch_size": 64, "transfer.max_images": 2000},
        # DomainBed's ERM (docs/method.md §8): Adam 5e-5, constant lr, training-domain validation; the upstream is
        # T-B's PVTv2 trajectory (the paper's T-C architecture is unknown: our choice)
        "paper": {**PVT_UPSTREAM["paper"], "axis": "domain", "fractions": (1.0,),
                  "transfer.task": "domain_generalization", "transfer.dataset": "pacs",
                  "domains": ("art_painting", "cartoon", "photo", "sketch"), "transfer.select": "best_val",
                  "transfer.probe_epochs": 0, "transfer.finetune_epochs": 30, "transfer.finetune_lr": 5e-5,
                  "transfer.schedule": "warmup_constant", "transfer.batch_size": 96},
    },

    "table_segmentation": {
        "smoke": {**SEGMENTATION, "forget.task": "segmentation", "forget.model": "deeplabv3plus",
                  "forget.model_kwargs": {**DEEPLAB_CPU, "channels": [8, 8, 16, 16], "decoder_channels": 8},
                  "forget.dataset": "canvas_source", "forget.channels": 3, "forget.size": 32, "forget.max_images": 243,
                  "forget.rate": 1 / 3, "forget.batch_size": 16, "forget.eval_images": 32,
                  "transfer.dataset": "canvas_target", "transfer.max_images": 64, "transfer.eval_images": 32,
                  "transfer.batch_size": 16},
        # our canvases (docs/datasets.md): Fashion-MNIST items on dark noise upstream (like VOC), coloured digits on
        # stripes downstream (like Cityscapes: new classes, another look), a small DeepLabV3+ at 64x64; piloted on
        # Naive's validation mIoU (docs/cpu_profile.md, pilots D0-D3): 10 or 30 epochs at 1e-3 stop low or climbing,
        # 40 epochs at 3e-3 plateau (the last 30 % of the steps move mIoU by < 1 point)
        "cpu": {**SEGMENTATION, "trials": 5, "forget.task": "segmentation", "forget.model": "deeplabv3plus",
                "forget.model_kwargs": DEEPLAB_CPU, "forget.dataset": "canvas_source", "forget.channels": 3,
                "forget.size": 64, "forget.rate": 1 / 3, "forget.pretrain_epochs": 10, "forget.batch_size": 32,
                "forget.eval_images": 500,
                "transfer.dataset": "canvas_target", "transfer.probe_epochs": 1, "transfer.finetune_epochs": 40,
                "transfer.finetune_lr": 3e-3, "transfer.batch_size": 32, "transfer.val_images": 200},
        # the KerasCV DeepLabV3+ guide (docs/method.md §8, our inference): ResNet-50, 512x512, batch 4, SGD with
        # cosine decay from 0.00175, momentum 0.9, weight decay 1e-4; VOC upstream (Θ0 is our own training: smp ships
        # ImageNet encoders only; pass an ImageNet backbone as --forget.init=<state_dict.pt>), r = 1/3, S = 5;
        # epochs unknown (ours: 30 upstream, 30 downstream)
        "paper": {**SEGMENTATION, "forget.task": "segmentation", "forget.model": "deeplabv3plus",
                  "forget.model_kwargs": DEEPLAB_PAPER, "forget.dataset": "voc", "forget.channels": 3,
                  "forget.size": 512, "forget.norm": "imagenet", "forget.rate": 1 / 3, "forget.pretrain_epochs": 30,
                  "forget.optimizer": "sgd", "forget.lr": 0.00175, "forget.batch_size": 4,
                  "transfer.dataset": "cityscapes", "transfer.probe_epochs": 0, "transfer.finetune_epochs": 30,
                  "transfer.optimizer": "sgd", "transfer.finetune_lr": 0.00175, "transfer.schedule": "cosine",
                  "transfer.weight_decay": 1e-4, "transfer.batch_size": 4, "transfer.val_images": 300,
                  "transfer.options": {"clipnorm": 10.0}},
    },
    "table_captioning": {
        "smoke": {**PVT_UPSTREAM["smoke"], **CAPTIONING, "transfer.dataset": "caption_canvases",
                  "transfer.native_size": True, "transfer.finetune_epochs": 1, "transfer.batch_size": 16,
                  "transfer.max_images": 64, "transfer.eval_images": 32,
                  "transfer.options": {"embed_dim": 32, "ff_dim": 32}},
        # the upstream is T-B's pvt-nano trajectory (shared units); canvases at their own 64x64. Piloted on Naive's
        # validation masked accuracy (docs/cpu_profile.md, pilots E0-E3): a 128-wide decoder (512 would cost 4x);
        # the recipe's constant 1e-4 still climbs after 20 epochs and early stopping cuts noisy curves short;
        # cosine from 1e-3 over 30 epochs without early stopping plateaus
        "cpu": {**PVT_UPSTREAM["cpu"], **CAPTIONING, "trials": 5, "transfer.dataset": "caption_canvases",
                "transfer.native_size": True, "transfer.finetune_epochs": 30, "transfer.finetune_lr": 1e-3,
                "transfer.schedule": "cosine", "transfer.batch_size": 64, "transfer.early_stop": 0,
                "transfer.options": {"embed_dim": 128, "ff_dim": 128}},
        # the Keras captioning example (docs/method.md §8, our inference): batch 64, up to 30 epochs, Adam with a
        # linear warm-up to 1e-4 (over 1/15 of the steps: under one epoch), early stopping with patience 3; T-B's
        # PVTv2 trajectory as the frozen encoder; validation carved from the 80 % training part
        "paper": {**PVT_UPSTREAM["paper"], **CAPTIONING, "transfer.dataset": "flickr8k",
                  "transfer.finetune_epochs": 30, "transfer.finetune_lr": 1e-4, "transfer.schedule": "warmup_constant",
                  "transfer.warmup_epochs": 1, "transfer.batch_size": 64, "transfer.early_stop": 3,
                  "transfer.val_images": 500},
    },
}


def table_profile(table: str | None, profile: str) -> dict[str, Any]:
    """What `table` changes on top of the profile (nothing for T-A and the tables that share its settings)."""
    return TABLES.get(table or "", {}).get(profile, {})


def _slurm_gpu_partitions() -> list[str]:
    """Partitions of the Slurm cluster here whose nodes offer GPU gres (sinfo's %G), [] without Slurm."""
    if not shutil.which("sinfo"):
        return []
    try:
        text = subprocess.run(["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split()[0].rstrip("*") for line in text.splitlines()
                   if len(line.split()) > 1 and "gpu" in line.split()[1].lower()})


def choose_profile() -> tuple[str, str]:
    """(profile, why): paper where a GPU can be had, cpu otherwise."""
    try:
        import torch
        if torch.cuda.is_available():
            return "paper", f"a CUDA device is here ({torch.cuda.get_device_name(0)})"
    except ImportError:
        pass
    gpus = _slurm_gpu_partitions()
    if gpus:
        return "paper", f"Slurm partition(s) with GPU gres: {', '.join(gpus)}"
    where = "the Slurm cluster here has no partition with GPU gres" if shutil.which("sinfo") else "no Slurm here"
    return "cpu", f"no CUDA device and {where} (--profile paper to force it)"


def make_config(profile: str | None = None, overrides: dict[str, Any] | list[str] | None = None,
                table: str | None = None) -> ExperimentCfg:
    """Defaults, then the profile's overrides (T-A's, then `table`'s), then the user's (`{"forget.lr": 3e-4}` or
    `["forget.lr=3e-4"]`)."""
    profile = profile or choose_profile()[0]
    if profile not in PROFILES:
        raise UnknownName(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    cfg = ExperimentCfg(profile=profile)
    apply_overrides(cfg, PROFILES[profile])
    apply_overrides(cfg, table_profile(table, profile))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    apply_overrides(cfg, overrides or {})
    return cfg
