"""Upstream objectives: what pre-training and the forgetting sessions optimise and report, per kind of task.

`objective(name)` gives the loss, the metric (with its evaluation), the batch augmentation and whether an epoch drops
its last partial batch, for "classification" (cross-entropy, accuracy, the paper's Keras warp) and "segmentation"
(cross-entropy over labelled pixels, mIoU, a joint horizontal flip of image and mask; docs/method.md §8 and
know/tasks/segmentation.py for the definitions). The downstream tasks (`know.tasks`) reuse them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from know.data import Augment, ImageSet
from know.device import autocast
from know.errors import UnknownName
from know.train import evaluate

IGNORE = 255  # mask value of unlabelled pixels
PIXELS_PER_EVAL_BATCH = 64 * 512 * 512  # evaluation batches hold at most this many pixels (memory only)


def seg_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy of (N, C, H, W) logits against (N, H, W) masks, averaged over labelled pixels (255 = ignore);
    0 when no pixel is labelled."""
    target = masks.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp(min=1)


def eval_batch_size(data: ImageSet, batch_size: int) -> int:
    """`batch_size`, lowered so a batch holds at most PIXELS_PER_EVAL_BATCH pixels (512x512 inputs: 64 images)."""
    _, h, w = data.shape
    return max(1, min(batch_size, PIXELS_PER_EVAL_BATCH // (h * w)))


@torch.no_grad()
def evaluate_miou(model: nn.Module, data: ImageSet, batch_size: int = 256, max_batches: int | None = None,
                  amp: bool = False) -> float:
    """mIoU in [0, 1] of `model` on `data` in eval mode (see the module docstring for the definition); over the first
    `max_batches` batches when set; restores the model's previous mode."""
    from torchmetrics.classification import MulticlassJaccardIndex

    was_training = model.training
    model.eval()
    metric = None
    bs = eval_batch_size(data, batch_size)
    for i, start in enumerate(range(0, len(data), bs)):
        if max_batches is not None and i == max_batches:
            break
        x, y = data.take(slice(start, start + bs))
        with autocast(x.device, amp):
            logits = model(x)
        if metric is None:
            metric = MulticlassJaccardIndex(num_classes=logits.shape[1], average="macro",
                                            ignore_index=IGNORE).to(x.device)
        metric.update(logits.argmax(1), y.long())
    model.train(was_training)
    if metric is None or not int(metric.confmat.sum()):  # nothing labelled was seen
        return 0.0
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class JointFlip:
    """Horizontal flip of image and mask together, each image with probability `p`, drawn from `gen`."""

    p: float = 0.5

    def apply(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        flip = (torch.rand(len(x), generator=gen, device=gen.device) < self.p).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)


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
