"""Downstream tasks: one interface (`know.tasks.base.Task`), one training loop (`fit`), one module per kind.

  classification          T-A, T-B: a new head, the paper's probe + fine-tune phases (`classification.py`)
  domain_generalization   T-C: leave one domain out, DomainBed's training-domain validation (`domains.py`)
  segmentation            T-D: DeepLabV3+ with a new pixel classifier, mIoU (`segmentation.py`)
  captioning              T-E: frozen upstream encoder under the Keras example's Transformer decoder (`captioning.py`)
A new table of a known kind is a grid declaration (reproduce/); a new kind of task is one module here plus its
entry in `TASKS`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from know.config import TransferCfg
from know.errors import UnknownName
from know.tasks.base import Task
from know.tasks.captioning import Captioning
from know.tasks.classification import Classification
from know.tasks.domains import DomainGeneralization
from know.tasks.segmentation import JointFlip, Segmentation, evaluate_miou, seg_loss
from know.data import Augment
from know.train import evaluate

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "domain_generalization": DomainGeneralization,
    "segmentation": Segmentation,
    "captioning": Captioning,
}


@dataclass(frozen=True)
class Objective:
    """What upstream training (pre-training, forgetting sessions) optimises and reports for a kind of task."""

    loss: Callable[[Tensor, Tensor], Tensor]  # (model outputs, targets) -> scalar
    evaluate: Callable[..., float]  # (model, data, batch_size, max_batches, amp) -> metric in [0, 1]
    metric: str
    augmentation: Callable[[], object]  # the batch augmentation when augment is on (`.apply(x, y, gen)`)
    drop_last: bool = False  # drop an epoch's last partial batch (segmentation: a batch of one breaks ASPP's BN)


OBJECTIVES: dict[str, Objective] = {
    "classification": Objective(F.cross_entropy, evaluate, "acc", Augment),  # docs/method.md §4: the Keras warp
    "segmentation": Objective(seg_loss, evaluate_miou, "miou", JointFlip, drop_last=True),  # image and mask flip
}


def objective(task: str) -> Objective:
    """The upstream objective of `task` (a name of `OBJECTIVES`)."""
    if task not in OBJECTIVES:
        raise UnknownName(f"unknown upstream task '{task}'; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[task]


def create_task(cfg: TransferCfg, seed: int) -> Task:
    """The task `cfg.task` for one run (trial seed `seed`)."""
    if cfg.task not in TASKS:
        raise UnknownName(f"unknown task '{cfg.task}'; known: {', '.join(TASKS)}")
    return TASKS[cfg.task](cfg, seed)
