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

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from know.datasets import analogs, paper, small
from know.datasets.records import Captioned, Labeled, Segmented
from know.errors import DatasetMissing, UnknownName

Record = Labeled | Segmented | Captioned


@dataclass(frozen=True)
class Entry:
    """A registered dataset: `load(root, split)`, its split names, and the split tables report on (for sets whose
    labelled evaluation split is called val, e.g. ImageNet or Cityscapes)."""

    load: Callable[[Path, str], Record]
    splits: tuple[str, ...] = ("train", "test")
    test_split: str = "test"
    train_size: int = 0  # images of the training split in the standard release: planning only (--dry-run)


def download_allowed() -> bool:
    """CIFAR may download through torchvision unless $KNOW_OFFLINE=1."""
    return os.environ.get("KNOW_OFFLINE", "0") != "1"


def _cifar(name: str, cls_name: str) -> Callable[[Path, str], Labeled]:
    """paper.load_<name>, downloading through torchvision first when the files are missing and that is allowed."""
    def load(root: Path, split: str) -> Labeled:
        loader = paper.PAPER_DATASETS[name]
        try:
            return loader(root, split)
        except DatasetMissing:
            if not download_allowed():
                raise
            import torchvision.datasets as tvd

            socket.setdefaulttimeout(15)
            try:
                getattr(tvd, cls_name)(str(root), train=split == "train", download=True)
            except Exception:  # offline, or a partial download: the loader's own message says what to fetch
                pass
            return loader(root, split)
    return load


DATASETS: dict[str, Entry] = {
    "cifar10": Entry(_cifar("cifar10", "CIFAR10"), train_size=50000),
    "cifar100": Entry(_cifar("cifar100", "CIFAR100"), train_size=50000),
    "fashion_mnist": Entry(small.load_fashion_mnist, train_size=60000),
    "mnist10k": Entry(small.load_mnist10k, train_size=8000),
    "mnist5k": Entry(small.load_mnist5k, train_size=4000),
    "digits": Entry(small.load_digits, train_size=1438),
    "debug": Entry(small.load_debug, train_size=256),
    "imagenet": Entry(paper.load_imagenet, ("train", "val"), "val", train_size=1281167),
    "tinyimagenet": Entry(paper.load_tinyimagenet, ("train", "val"), "val", train_size=100000),
    "stanford_cars": Entry(paper.load_stanford_cars, train_size=8144),
    "cub200": Entry(paper.load_cub200, train_size=5994),
    "flowers102": Entry(paper.load_flowers102, ("train", "val", "test"), train_size=1020),
    "pacs": Entry(paper.load_pacs, ("all",), "all", train_size=9991),
    "voc": Entry(paper.load_voc, ("train", "val", "trainval"), "val", train_size=1464),
    "cityscapes": Entry(paper.load_cityscapes, ("train", "val"), "val", train_size=2975),
    "flickr8k": Entry(paper.load_flickr8k, ("all", "train", "dev", "test"), "all", train_size=8091),
    # the cpu profile's offline analogs (analogs.py)
    "styles": Entry(lambda root, split: analogs.styles_distinct(split, root=root), ("all",), "all",
                    train_size=10000),
    "two_digit_mnist": Entry(lambda root, split: analogs.two_digit_mnist(split, root=root), train_size=8000),
    "canvas_source": Entry(lambda root, split: analogs.segmentation_canvases("source", split, root=root),
                           ("train", "val", "test"), train_size=4000),
    "canvas_target": Entry(lambda root, split: analogs.segmentation_canvases("target", split, root=root),
                           ("train", "val", "test"), train_size=1000),
    "caption_canvases": Entry(lambda root, split: analogs.caption_canvases(split, root=root),
                              ("train", "val", "test"), train_size=6000),
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
    return e.load(Path(root), split)
