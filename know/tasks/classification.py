"""Classification transfer (T-A, T-B): the upstream network with a new head, in two phases (docs/method.md §4).

  phase 1 ("probe", `probe_epochs`): conv and dense layers frozen; normalisation layers and the new head train,
          Adam `probe_lr` (the paper: 10 epochs at 1e-3);
  phase 2 ("finetune", `finetune_epochs`): everything trains with `optimizer` and the `schedule` (the paper: Adam,
          cosine from 4e-4 over 100 epochs).
A probe_epochs of 0 gives the one-phase recipes (the authors' PVTv2 code: SGD, warm-up, flat, cosine).

Choices (ours, documented): Keras freezes a Conv/Dense layer as a whole, so phase 1 freezes the biases of conv and
dense layers too; every parameter that is neither normalisation nor head ("other": positional embeddings, class
tokens, layer scales in timm models) is frozen as well. Normalisation layers run in training mode in phase 1. The
new head gets Keras' Dense init (Glorot-uniform kernel, zero bias). Each phase starts with a fresh optimizer. Input
channels, size and normalisation come from the upstream model; the downstream data is adapted to them. The training
images are a fixed seeded subset (`max_images`) and the validation images (`val_images`) are carved from the same
train split before it, never from the test split; both are the same for every trial (trials differ in their seed:
head init, batch order, augmentation), as the paper's five trials fine-tune on the same CIFAR-10.
"""
from __future__ import annotations

import torch
from torch import nn

from know.data import Augment, ImageSet, get_dataset
from know.datasets import entry
from know.device import fast_layout, resolve_device
from know.errors import KnowError
from know.models import get_head, replace_head
from know.tasks.base import Phase, Task, finetune_lr, transfer_unit, upstream_spec
from know.train import evaluate, generator, seed_from, seeded_model, train_epoch
from know.trajectory import param_kinds


def probe_trainable(model: nn.Module) -> set[str]:
    """Names trainable in phase 1: normalisation parameters and the head's weight and bias."""
    head = get_head(model)[0] + "."
    return {n for n, k in param_kinds(model).items() if k == "norm" or n.startswith(head)}


def builder_kwargs(model_kwargs: dict) -> dict:
    """The model builder's own kwargs: what travels with the weights about the input (in_chans, img_size, norm)
    is not one of them."""
    return {k: v for k, v in model_kwargs.items() if k not in ("in_chans", "img_size", "norm")}


def infer_num_classes(model_name: str, model_kwargs: dict, state: dict[str, torch.Tensor]) -> int:
    """Upstream class count from the head's weight in `state`."""
    in_chans, img_size, _ = upstream_spec(state, model_kwargs)
    probe = seeded_model(model_name, 0, 10, in_chans, img_size, builder_kwargs(model_kwargs))
    key = get_head(probe)[0] + ".weight"
    if key not in state:
        raise KnowError(f"the checkpoint has no '{key}' (the head of {model_name}); is it the right architecture?")
    return int(state[key].shape[0])


def build_transfer_model(state: dict[str, torch.Tensor], model_name: str, model_kwargs: dict, num_classes: int,
                         downstream_classes: int, seed: int, device) -> nn.Module:
    """Upstream architecture with `state` loaded (strictly), then a fresh Keras-initialised head."""
    in_chans, img_size, _ = upstream_spec(state, model_kwargs)
    kw = builder_kwargs(model_kwargs)
    model = seeded_model(model_name, seed_from(seed, "upstream-init"), num_classes, in_chans, img_size, kw)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise KnowError(f"checkpoint does not fit {model_name} {kw}: {str(e).splitlines()[0]}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_from(seed, "head"))
        replace_head(model, downstream_classes)
        head = get_head(model)[1]
        nn.init.xavier_uniform_(head.weight)  # Keras Dense default
        nn.init.zeros_(head.bias)
    return fast_layout(model.to(device))


def carve(n: int, dataset: str, val_images: int, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices of a train split of n images: one fixed seeded permutation, val first, train after."""
    perm = torch.randperm(n, generator=generator(dataset, "downstream"))
    if val_images >= n:
        raise KnowError(f"--transfer.val_images={val_images} leaves no training images of {dataset} ({n} in all)")
    val, rest = perm[:val_images], perm[val_images:]
    return (rest[:max_images] if max_images else rest), val


def eval_subset(data: ImageSet, images: int | None) -> ImageSet:
    """A fixed subset of `images` images (the same for every run), or all of them."""
    if images is None or images >= len(data):
        return data
    return data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:images])


class Classification(Task):
    """Transfer to a labelled image set (see the module docstring)."""

    metric = "acc"

    def data_kwargs(self, upstream: dict) -> dict:
        """get_dataset's arguments: the upstream model's channels and normalisation, and its input size (or the
        task's `size`); `native_size` keeps the dataset's, `store_size` stores small and resizes every batch."""
        c = self.cfg
        size = None if c.native_size else (c.size or upstream["img_size"])
        stored = c.store_size if c.store_size and size else size
        return dict(root=c.data_root, channels=upstream["in_chans"], size=stored, norm=upstream["norm"],
                    out_size=size if stored != size else None, device=resolve_device(c.device))

    def load(self, upstream: dict) -> tuple[ImageSet, ImageSet | None, ImageSet]:
        kw, name = self.data_kwargs(upstream), self.cfg.dataset
        full = get_dataset(name, "train", **kw)
        train, val = carve(len(full), name, self.cfg.val_images, self.cfg.max_images)
        test = eval_subset(get_dataset(name, entry(name).test_split, **kw), self.cfg.eval_images)
        return full.subset(train), (full.subset(val) if len(val) else None), test

    def build(self, state: dict[str, torch.Tensor], upstream: dict, data: ImageSet) -> nn.Module:
        n_up = upstream["num_classes"] or infer_num_classes(upstream["model"], upstream["model_kwargs"], state)
        return build_transfer_model(state, upstream["model"], upstream["model_kwargs"], n_up, data.num_classes,
                                    self.seed, data.x.device)

    def phases(self) -> list[Phase]:
        c = self.cfg
        return [Phase("probe", c.probe_epochs, "adam", lambda e: c.probe_lr, probe_trainable),
                Phase("finetune", c.finetune_epochs, c.optimizer, finetune_lr(c), None, c.weight_decay)]

    def train_epoch(self, model, opt, data, gen, max_steps):
        aug = Augment() if self.cfg.augment else None
        idx = torch.arange(len(data), device=data.x.device)
        loss = train_epoch(model, data, idx, opt, self.cfg.batch_size, gen, aug, max_steps=max_steps,
                           amp=self.cfg.amp)
        return loss, min(-(-len(data) // self.cfg.batch_size), max_steps or len(data))

    def evaluate(self, model, data, max_batches):
        return {"acc": evaluate(model, data, self.cfg.eval_batch_size, max_batches, self.cfg.amp)}


def unit_transfer(cfg: dict, out, deps: dict) -> dict:
    """One cached fine-tune run of this task (`know.tasks.base.transfer_unit`)."""
    return transfer_unit(Classification, cfg, out, deps)
