"""Semantic segmentation transfer (T-D): the upstream DeepLabV3+ with a new pixel classifier, scored by mIoU.

The paper gives no segmentation recipe; ours follows the KerasCV DeepLabV3+ guide (docs/method.md §8) where it can
and the classification task (`know.tasks.classification`) for the rest:

  phase 1 ("probe", `probe_epochs`): normalisation layers and the new segmentation head train, Adam `probe_lr`;
  phase 2 ("finetune", `finetune_epochs`): everything trains with `optimizer`, `finetune_lr`, `schedule` and
          `weight_decay`.
`probe_epochs=0` gives the KerasCV recipe as one phase (`KERASCV_RECIPE`: SGD with momentum 0.9, cosine from
0.00175 = 0.007·4/16, weight decay 1e-4, batch 4, gradient norm clipped at 10 per tensor). Two differences remain:
its cosine decays per step, ours per epoch (`know.tasks.base.finetune_lr`); Keras 3's SGD decays weights directly
(decoupled), `know.train.make_optimizer` adds the decay to the gradient, where momentum 0.9 makes it about ten times
stronger at the same value.

Choices (ours, documented; the paper is silent on all of them):
- Loss (`seg_loss`): pixel cross-entropy averaged over the labelled pixels (255 = ignore, e.g. VOC's object borders,
  Cityscapes' void); a batch without one labelled pixel contributes 0. KerasCV's one-hot loss gives ignored pixels
  a zero target, i.e. also no gradient, but averages over all pixels: the same direction, another scale.
- Metric (`evaluate_miou`): mIoU in [0, 1] from one confusion matrix accumulated over the whole evaluated set
  (torchmetrics' MulticlassJaccardIndex, average="macro", ignore_index=255): IoU_c = TP / (TP + FP + FN) per class,
  averaged over the classes that occur in the ground truth or the prediction of that set. A class absent from both
  has no IoU and is left out of the mean (torchmetrics gives it weight 0, whatever `zero_division`): the definition
  of Keras' MeanIoU (the KerasCV guide's metric) and of the VOC / Cityscapes benchmarks, which also count the
  background class 0 (the guide feeds MeanIoU one-hot masks, so its ignored pixels count as background; ours count
  for nothing). A set without a single labelled pixel scores 0.
- Augmentation (`augment=True`): a horizontal flip of each image with probability 1/2, applied to the image and its
  mask alike (KerasCV guide: `RandomFlip`), drawn from the epoch's generator after the batch order (the contract of
  `know.train.train_epoch`); upstream segmentation (`know.tasks.OBJECTIVES`) uses the same flip.
- Batches: the last partial batch of an epoch is dropped (KerasCV: `batch(4, drop_remainder=True)`); this also
  keeps a batch of one image away from the ASPP image-pooling branch, whose BatchNorm then sees one value per
  channel, which PyTorch refuses in training mode.
- New head: smp's 1x1 conv, Glorot-uniform kernel, zero bias (smp's and Keras' init), seeded by the trial.
  Normalisation layers run in training mode in phase 1, as in classification.
- Data: training images are the dataset's "train" split minus `val_images` carved for validation (fixed for every
  trial, `carve`), at most `max_images`; tests are on its `test_split` (VOC and Cityscapes: val), `eval_images` of
  them. Images are adapted to the upstream model's channels, size and normalisation, masks with them (nearest).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from know.config import TransferCfg
from know.data import ImageSet, get_dataset
from know.datasets import entry
from know.device import fast_layout, resolve_device
from know.errors import KnowError
from know.models.segmentation import get_segmentation_head, replace_segmentation_head
from know.objectives import JointFlip, evaluate_miou, seg_loss
from know.tasks.base import Phase, Task, finetune_lr
from know.tasks.base import transfer_unit, upstream_spec
from know.tasks.classification import builder_kwargs, carve, eval_subset
from know.train import epoch_steps, seed_from, seeded_model, train_epoch
from know.trajectory import param_kinds

# The KerasCV DeepLabV3+ guide's recipe (docs/method.md §8) as TransferCfg fields: one SGD phase.
KERASCV_RECIPE = dict(probe_epochs=0, optimizer="sgd", finetune_lr=0.007 * 4 / 16, schedule="cosine", min_lr=0.0,
                      weight_decay=1e-4, batch_size=4, augment=True, options={"clipnorm": 10.0})


@dataclass(frozen=True)
class SegmentationOptions:
    """`TransferCfg.options` of this task. clipnorm: clip every gradient tensor to this L2 norm before each step
    (Keras' `clipnorm`, per tensor; the KerasCV recipe uses 10); None: no clipping."""

    clipnorm: float | None = None

    @classmethod
    def parse(cls, options: dict) -> SegmentationOptions:
        known = [f.name for f in fields(cls)]
        bad = sorted(set(options) - set(known))
        if bad:
            raise KnowError(f"unknown --transfer.options for segmentation: {', '.join(bad)}; known: {', '.join(known)}")
        return cls(**options)


# ---------------------------------------------------------------------------------------------- the task
def probe_trainable(model: nn.Module) -> set[str]:
    """Names trainable in phase 1: normalisation parameters and the segmentation head's weight and bias."""
    head = get_segmentation_head(model)[0] + "."
    return {n for n, k in param_kinds(model).items() if k == "norm" or n.startswith(head)}


def infer_num_classes(model_name: str, model_kwargs: dict, state: dict[str, Tensor]) -> int:
    """Upstream class count from the segmentation head's weight in `state`."""
    in_chans, img_size, _ = upstream_spec(state, model_kwargs)
    with torch.device("meta"):  # the head's name only: no weights
        probe = seeded_model(model_name, 0, 2, in_chans, img_size, builder_kwargs(model_kwargs))
    key = get_segmentation_head(probe)[0] + ".weight"
    if key not in state:
        raise KnowError(f"the checkpoint has no '{key}' (the head of {model_name}); is it the right architecture?")
    return int(state[key].shape[0])


def build_segmentation_model(state: dict[str, Tensor], model_name: str, model_kwargs: dict, num_classes: int,
                             downstream_classes: int, seed: int, device) -> nn.Module:
    """The upstream architecture with `state` loaded (strictly), then a fresh segmentation head seeded by `seed`."""
    in_chans, img_size, _ = upstream_spec(state, model_kwargs)
    kw = builder_kwargs(model_kwargs)
    model = seeded_model(model_name, seed_from(seed, "upstream-init"), num_classes, in_chans, img_size, kw)
    try:
        model.load_state_dict(dict(state))  # a copy: smp's load_state_dict may rename keys in place
    except RuntimeError as e:
        raise KnowError(f"checkpoint does not fit {model_name} {kw}: {str(e).splitlines()[0]}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_from(seed, "head"))
        replace_segmentation_head(model, downstream_classes)
    return fast_layout(model.to(device))


class Segmentation(Task):
    """Transfer to a segmentation set (see the module docstring)."""

    metric = "miou"

    def __init__(self, cfg: TransferCfg, seed: int):
        super().__init__(cfg, seed)
        self.options = SegmentationOptions.parse(cfg.options)

    def data_kwargs(self, upstream: dict) -> dict:
        return dict(root=self.cfg.data_root, channels=upstream["in_chans"], size=upstream["img_size"],
                    norm=upstream["norm"], device=resolve_device(self.cfg.device))

    def load(self, upstream: dict) -> tuple[ImageSet, ImageSet | None, ImageSet]:
        kw, name = self.data_kwargs(upstream), self.cfg.dataset
        full = get_dataset(name, "train", **kw)
        if full.y is None or full.y.dim() != 3:
            raise KnowError(f"dataset {name} has no segmentation masks; task=segmentation needs one that has "
                            "(canvas_target, voc, cityscapes)")
        train, val = carve(len(full), name, self.cfg.val_images, self.cfg.max_images)
        test = eval_subset(get_dataset(name, entry(name).test_split, **kw), self.cfg.eval_images)
        return full.subset(train), (full.subset(val) if len(val) else None), test

    def build(self, state: dict[str, Tensor], upstream: dict, data: ImageSet) -> nn.Module:
        n_up = upstream["num_classes"] or infer_num_classes(upstream["model"], upstream["model_kwargs"], state)
        return build_segmentation_model(state, upstream["model"], upstream["model_kwargs"], n_up, data.num_classes,
                                        self.seed, data.x.device)

    def phases(self) -> list[Phase]:
        c = self.cfg
        return [Phase("probe", c.probe_epochs, "adam", lambda e: c.probe_lr, probe_trainable),
                Phase("finetune", c.finetune_epochs, c.optimizer, finetune_lr(c), None, c.weight_decay)]

    def train_epoch(self, model, opt, data, gen, max_steps):
        c = self.cfg
        loss = train_epoch(model, data, torch.arange(len(data), device=data.x.device), opt, c.batch_size, gen,
                           JointFlip() if c.augment else None, loss_fn=seg_loss, max_steps=max_steps, amp=c.amp,
                           drop_last=True, clipnorm=self.options.clipnorm)
        return loss, epoch_steps(len(data), c.batch_size, True, max_steps)

    def evaluate(self, model, data, max_batches):
        return {"miou": evaluate_miou(model, data, self.cfg.eval_batch_size, max_batches, self.cfg.amp)}


def unit_transfer(cfg: dict, out, deps: dict) -> dict:
    """One cached fine-tune run of this task (`know.tasks.base.transfer_unit`)."""
    return transfer_unit(Segmentation, cfg, out, deps)
