"""Raw dataset loaders: files on disk (or registry packages) -> records of uint8 images and targets.

`records` defines what every loader returns (`Labeled`, `Segmented`, `Captioned`); `know.data` turns those into the
training convention (device tensors, normalisation, sizes). `DATASETS` is the one registry of names:
- `small`: the real data that ships offline (Fashion-MNIST, MNIST-10k, MNIST-5k, sklearn digits) and `debug`;
- `paper`: the paper profile's datasets in their publishers' layouts (CIFAR, ImageNet, TinyImageNet, Stanford Cars,
  CUB-200, Flowers-102, PACS, VOC, Cityscapes, Flickr8K); CIFAR downloads through torchvision when online;
- `analogs`: the cpu profile's offline analogs built from the small sets (styles, two-digit MNIST, canvases).
Loaders never download in tests; each one's error names what to download and where to put it (docs/datasets.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from know.datasets.records import Captioned, Labeled, Segmented
from know.errors import UnknownName

Record = Labeled | Segmented | Captioned


@dataclass(frozen=True)
class Entry:
    """A registered dataset: its loader, its split names, and the split tables report on (for sets whose labelled
    evaluation split is called val, e.g. ImageNet or Cityscapes). Loaders are named, not imported, so that what a
    cached unit's key covers is the loader of the datasets it uses (`loader_module`), not every loader."""

    loader: str  # "module:function" of `function(root, split) -> record`, imported when the set is loaded
    splits: tuple[str, ...] = ("train", "test")
    test_split: str = "test"
    train_size: int = 0  # images of the training split in the standard release: planning only (--dry-run)


DATASETS: dict[str, Entry] = {
    "cifar10": Entry("know.datasets.paper:load_cifar10_or_download", train_size=50000),
    "cifar100": Entry("know.datasets.paper:load_cifar100_or_download", train_size=50000),
    "fashion_mnist": Entry("know.datasets.small:load_fashion_mnist", train_size=60000),
    "mnist10k": Entry("know.datasets.small:load_mnist10k", train_size=8000),
    "mnist5k": Entry("know.datasets.small:load_mnist5k", train_size=4000),
    "digits": Entry("know.datasets.small:load_digits", train_size=1438),
    "debug": Entry("know.datasets.small:load_debug", train_size=256),
    "imagenet": Entry("know.datasets.paper:load_imagenet", ("train", "val"), "val", train_size=1281167),
    "tinyimagenet": Entry("know.datasets.paper:load_tinyimagenet", ("train", "val"), "val", train_size=100000),
    "stanford_cars": Entry("know.datasets.paper:load_stanford_cars", train_size=8144),
    "cub200": Entry("know.datasets.paper:load_cub200", train_size=5994),
    "flowers102": Entry("know.datasets.paper:load_flowers102", ("train", "val", "test"), train_size=1020),
    "pacs": Entry("know.datasets.paper:load_pacs", ("all",), "all", train_size=9991),
    "voc": Entry("know.datasets.paper:load_voc", ("train", "val", "trainval"), "val", train_size=1464),
    "cityscapes": Entry("know.datasets.paper:load_cityscapes", ("train", "val"), "val", train_size=2975),
    "flickr8k": Entry("know.datasets.paper:load_flickr8k", ("all", "train", "dev", "test"), "all", train_size=8091),
    # the cpu profile's offline analogs (analogs.py)
    "styles": Entry("know.datasets.analogs:load_styles", ("all",), "all", train_size=10000),
    "two_digit_mnist": Entry("know.datasets.analogs:load_two_digit_mnist", train_size=8000),
    "canvas_source": Entry("know.datasets.analogs:load_canvas_source", ("train", "val", "test"), train_size=4000),
    "canvas_target": Entry("know.datasets.analogs:load_canvas_target", ("train", "val", "test"), train_size=1000),
    "caption_canvases": Entry("know.datasets.analogs:load_caption_canvases", ("train", "val", "test"),
                              train_size=6000),
}


def entry(name: str) -> Entry:
    if name not in DATASETS:
        raise UnknownName(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load(name: str, root: Path, split: str) -> Record:
    """The raw record of `split` of dataset `name` under `root`."""
    e = entry(name)
    if split not in e.splits:
        raise ValueError(f"dataset {name} has splits {', '.join(e.splits)}, not '{split}'")
    module, function = e.loader.split(":")
    return getattr(importlib.import_module(module), function)(Path(root), split)


def loader_module(name: str) -> str:
    """The module that loads dataset `name` (a unit's cache key covers its code)."""
    return entry(name).loader.split(":")[0]
