"""Raw loaders of the paper profile's datasets: the files as their publishers ship them -> `records`.

`load_<name>(root, split)` reads the official on-disk layout under `root`, through the torchvision class where one
exists, and returns file lists (know.data decodes them); only CIFAR is read into memory. A missing file or folder
raises DatasetMissing in one line naming the dataset, the folder looked in, what is missing and what to download
where. `know.datasets.fake` writes tiny copies of each layout that these same loaders read (tests, rehearsals).
"""
from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from know.datasets.records import Captioned, Labeled, Segmented
from know.errors import DatasetMissing

T = TypeVar("T")
KEEP = " (or pass --data-root / set KNOW_DATA)"
GET = {  # what to download and where to extract it; {root} is the data root
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into {root}",
    "cifar100": "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into {root}",
    "imagenet": "download ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar from "
                "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php into {root} (torchvision unpacks "
                "them there into meta.bin, train/ and val/)",
    "tinyimagenet": "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it into {root}",
    "stanford_cars": "get Stanford Cars (https://ai.stanford.edu/~jkrause/cars/car_dataset.html is offline: use a "
                     "mirror such as Kaggle's) and put cars_train/, cars_test/, devkit/ and "
                     "cars_test_annos_withlabels.mat into {root}/stanford_cars",
    "cub200": "download CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vvk41 and extract it into {root}",
    "flowers102": "download 102flowers.tgz, imagelabels.mat and setid.mat from "
                  "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and extract them into {root}/flowers-102",
    "pacs": "download PACS as DomainBed does (https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd, "
            "see github.com/facebookresearch/DomainBed), extract it into {root} and rename its kfold/ to PACS/",
    "voc": "download http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar and extract it into "
           "{root}",
    "cityscapes": "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
                  "https://www.cityscapes-dataset.com/downloads/ (login required) and extract them into {root}",
    "flickr8k": "download https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip and "
                "Flickr8k_text.zip and extract both into {root}",
}

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
PACS_DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FLICKR_IMAGES = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the Keras example's zip unpacks the misspelt one
FLICKR_SPLITS = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
                 "test": "Flickr_8k.testImages.txt"}


# ---------------------------------------------------------------- missing files

def _missing(name: str, root: Path, folder: Path, what: str) -> DatasetMissing:
    text = f"{name}: {what} not found in {folder}; {GET[name].format(root=root)}{KEEP}"
    return DatasetMissing(" ".join(text.split()))  # one line, whatever torchvision's message held


def _need(name: str, root: Path, folder: Path, *paths: str | tuple[str, ...]) -> None:
    """Raise for the first of `paths` (under `folder`; a tuple: any one of its alternatives) that does not exist."""
    for path in paths:
        alternatives = (path,) if isinstance(path, str) else path
        if not any((folder / p).exists() for p in alternatives):
            raise _missing(name, root, folder, " or ".join(alternatives))


def _need_files(name: str, root: Path, files: Iterable[Path]) -> None:
    """Raise for the first listed file not on disk: one listing per folder, not a stat per file (network disks)."""
    listings: dict[Path, set[str]] = {}
    for f in files:
        if f.parent not in listings:
            listings[f.parent] = set(os.listdir(f.parent)) if f.parent.is_dir() else set()
        if f.name not in listings[f.parent]:
            raise _missing(name, root, f.parent, f.name)


def _torchvision(name: str, root: Path, folder: Path, make: Callable[[], T]) -> T:
    """torchvision's own 'not found' errors (for what the checks before it let through) as DatasetMissing."""
    try:
        return make()
    except (RuntimeError, FileNotFoundError) as e:
        raise _missing(name, root, folder, f"what torchvision needs ({e})") from None


def _check_split(name: str, split: str) -> None:
    if split not in PAPER_SPLITS[name]:
        raise ValueError(f"{name} has splits {', '.join(PAPER_SPLITS[name])}, not '{split}'")


def _labels(values: Iterable[int]) -> torch.Tensor:
    return torch.tensor([int(v) for v in values], dtype=torch.int64)


# ---------------------------------------------------------------- classification

@functools.cache
def _md5_free(cls_name: str) -> type:
    """torchvision's class checking that its files exist, not their md5: the md5 pins the publisher's bytes, which
    the generated copies of know.datasets.fake cannot match (a truncated file still fails to parse)."""
    import torchvision.datasets as tvd

    base = getattr(tvd, cls_name)
    if cls_name == "Flowers102":
        return type(cls_name, (base,), {"_file_dict": {k: (f, None) for k, (f, _) in base._file_dict.items()}})
    return type(cls_name, (base,), {"train_list": [[f, None] for f, _ in base.train_list],
                                    "test_list": [[f, None] for f, _ in base.test_list],
                                    "meta": {**base.meta, "md5": None}})


def _load_cifar(name: str, cls_name: str, folder: str, files: list[str], root: Path, split: str) -> Labeled:
    _check_split(name, split)
    _need(name, root, root / folder, *files)
    ds = _torchvision(name, root, root / folder, lambda: _md5_free(cls_name)(str(root), train=split == "train"))
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return Labeled(images, _labels(ds.targets), list(ds.classes))


def load_cifar10(root: Path, split: str) -> Labeled:
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return _load_cifar("cifar10", "CIFAR10", "cifar-10-batches-py", files, root, split)


def load_cifar100(root: Path, split: str) -> Labeled:
    return _load_cifar("cifar100", "CIFAR100", "cifar-100-python", ["train", "test", "meta"], root, split)


def load_imagenet(root: Path, split: str) -> Labeled:
    """ILSVRC2012 as torchvision prepares it: meta.bin (from the devkit) and train/, val/ of wnid folders."""
    import torchvision.datasets as tvd

    _check_split("imagenet", split)
    _need("imagenet", root, root, ("meta.bin", "ILSVRC2012_devkit_t12.tar.gz"),
          (split, f"ILSVRC2012_img_{split}.tar"))
    ds = _torchvision("imagenet", root, root, lambda: tvd.ImageNet(str(root), split))
    return Labeled([Path(p) for p, _ in ds.samples], _labels(t for _, t in ds.samples), [c[0] for c in ds.classes])


def load_tinyimagenet(root: Path, split: str) -> Labeled:
    """Classes in wnids.txt order, named by the first name words.txt gives each wnid."""
    _check_split("tinyimagenet", split)
    base = root / "tiny-imagenet-200"
    _need("tinyimagenet", root, base, "wnids.txt", "words.txt", split)
    wnids = (base / "wnids.txt").read_text().split()
    words = dict(line.split("\t", 1) for line in (base / "words.txt").read_text().splitlines() if "\t" in line)
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        for w in wnids:
            _need("tinyimagenet", root, base / "train", f"{w}/images")
        pairs = [(f, index[w]) for w in wnids for f in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    else:
        _need("tinyimagenet", root, base / "val", "val_annotations.txt", "images")
        rows = [line.split("\t") for line in (base / "val" / "val_annotations.txt").read_text().splitlines() if line]
        pairs = [(base / "val" / "images" / r[0], index[r[1]]) for r in rows]
        _need_files("tinyimagenet", root, (f for f, _ in pairs))
    classes = [words[w].split(",")[0].strip() for w in wnids]
    return Labeled([f for f, _ in pairs], _labels(y for _, y in pairs), classes)


def load_stanford_cars(root: Path, split: str) -> Labeled:
    import torchvision.datasets as tvd

    _check_split("stanford_cars", split)
    base = root / "stanford_cars"
    annotations = "devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
    _need("stanford_cars", root, base, "devkit/cars_meta.mat", annotations, f"cars_{split}")
    ds = _torchvision("stanford_cars", root, base, lambda: tvd.StanfordCars(str(root), split))
    files = [Path(p) for p, _ in ds._samples]
    _need_files("stanford_cars", root, files)
    return Labeled(files, _labels(y for _, y in ds._samples), [str(c) for c in ds.classes])


def load_cub200(root: Path, split: str) -> Labeled:
    """The official train/test split of train_test_split.txt; classes named without their "001." prefix."""
    _check_split("cub200", split)
    base = root / "CUB_200_2011"
    tables = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    _need("cub200", root, base, "images", *tables)
    paths, labels, is_train, classes = (
        dict(line.split(maxsplit=1) for line in (base / t).read_text().splitlines() if line.strip()) for t in tables)
    class_ids = sorted(classes, key=int)
    index = {c: i for i, c in enumerate(class_ids)}
    ids = sorted((i for i in paths if is_train[i].strip() == ("1" if split == "train" else "0")), key=int)
    files = [base / "images" / paths[i].strip() for i in ids]
    _need_files("cub200", root, files)
    names = [classes[c].strip().split(".", 1)[-1] for c in class_ids]
    return Labeled(files, _labels(index[labels[i].strip()] for i in ids), names)


def load_flowers102(root: Path, split: str) -> Labeled:
    """The official train/val/test split of setid.mat (10 + 10 images per class, the rest to test)."""
    _check_split("flowers102", split)
    base = root / "flowers-102"
    _need("flowers102", root, base, "jpg", "imagelabels.mat", "setid.mat")
    ds = _torchvision("flowers102", root, base, lambda: _md5_free("Flowers102")(str(root), split))
    files = list(ds._image_files)
    _need_files("flowers102", root, files)
    return Labeled(files, _labels(ds._labels), list(ds.classes))


def load_pacs(root: Path, split: str) -> Labeled:
    """All four domains in one record (domain-major order); the leave-one-domain-out protocol splits it later."""
    _check_split("pacs", split)
    base = root / "PACS"
    _need("pacs", root, base, *PACS_DOMAINS)
    folders = {d: sorted(p.name for p in (base / d).iterdir() if p.is_dir()) for d in PACS_DOMAINS}
    classes = sorted(set().union(*folders.values()))
    for d in PACS_DOMAINS:
        _need("pacs", root, base / d, *classes)
    files, labels, domains = [], [], []
    for di, d in enumerate(PACS_DOMAINS):
        for ci, c in enumerate(classes):
            found = sorted(p for p in (base / d / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [ci] * len(found)
            domains += [di] * len(found)
    return Labeled(files, _labels(labels), classes, _labels(domains), list(PACS_DOMAINS))


# ---------------------------------------------------------------- segmentation

def decode_voc_mask(path: Path) -> torch.Tensor:
    """A SegmentationClass PNG -> its palette indices: the class ids, 255 on object borders (ignore). Gray PNGs of
    class ids (SegmentationClassAug-style copies) read the same; an RGB rendering does not."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: a VOC class mask is a palette PNG (mode P), not mode {img.mode}")
        return torch.from_numpy(np.array(img, dtype=np.uint8))


@functools.cache
def _cityscapes_train_ids() -> tuple[np.ndarray, list[str]]:
    """labelId -> trainId lookup (255 for every class not evaluated) and the 19 evaluated names by trainId."""
    import torchvision.datasets as tvd

    lut = np.full(256, 255, dtype=np.uint8)
    kept = sorted((c for c in tvd.Cityscapes.classes if c.id >= 0 and 0 <= c.train_id < 255), key=lambda c: c.train_id)
    for c in kept:
        lut[c.id] = c.train_id
    return lut, [c.name for c in kept]


def decode_cityscapes_mask(path: Path) -> torch.Tensor:
    """A *_gtFine_labelIds.png -> trainIds 0..18, 255 = ignore."""
    with Image.open(path) as img:
        ids = np.array(img)
    return torch.from_numpy(_cityscapes_train_ids()[0][ids])


def load_voc(root: Path, split: str) -> Segmented:
    import torchvision.datasets as tvd

    _check_split("voc", split)
    base = root / "VOCdevkit" / "VOC2012"
    _need("voc", root, base, "JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{split}.txt")
    ds = _torchvision("voc", root, base, lambda: tvd.VOCSegmentation(str(root), year="2012", image_set=split))
    images, masks = [Path(p) for p in ds.images], [Path(p) for p in ds.masks]
    _need_files("voc", root, images + masks)
    return Segmented(images, masks, list(VOC_CLASSES), decode_voc_mask)


def load_cityscapes(root: Path, split: str) -> Segmented:
    """Fine annotations, sorted by file name (torchvision lists folders in directory order)."""
    import torchvision.datasets as tvd

    _check_split("cityscapes", split)
    _need("cityscapes", root, root, (f"leftImg8bit/{split}", "leftImg8bit_trainvaltest.zip"),
          (f"gtFine/{split}", "gtFine_trainvaltest.zip"))
    ds = _torchvision("cityscapes", root, root,
                      lambda: tvd.Cityscapes(str(root), split, mode="fine", target_type="semantic"))
    pairs = sorted((Path(i), Path(t[0])) for i, t in zip(ds.images, ds.targets))
    _need_files("cityscapes", root, (m for _, m in pairs))
    return Segmented([i for i, _ in pairs], [m for _, m in pairs], _cityscapes_train_ids()[1], decode_cityscapes_mask)


# ---------------------------------------------------------------- captioning

def load_flickr8k(root: Path, split: str) -> Captioned:
    """Captions from Flickr8k.token.txt, images in its order of first mention (the order the Keras captioning
    example shuffles with its seed when it makes its own 80/20 split of "all"); train/dev/test: the official lists."""
    _check_split("flickr8k", split)
    images = next((root / d for d in FLICKR_IMAGES if (root / d).is_dir()), None)
    if images is None:
        raise _missing("flickr8k", root, root, " or ".join(FLICKR_IMAGES))
    text = next((d for d in (root, root / "Flickr8k_text") if (d / "Flickr8k.token.txt").is_file()), None)
    if text is None:
        raise _missing("flickr8k", root, root, "Flickr8k.token.txt or Flickr8k_text/Flickr8k.token.txt")
    captions: dict[str, list[str]] = {}
    for line in (text / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, _, caption = line.partition("\t")
        name = key.split("#")[0].strip()
        if name.endswith(".jpg"):  # the file also captions "2258277193_586949ec62.jpg.1", which is no image
            captions.setdefault(name, []).append(caption.strip())
    if split == "all":
        names = list(captions)
    else:
        _need("flickr8k", root, text, FLICKR_SPLITS[split])
        names = (text / FLICKR_SPLITS[split]).read_text().split()
        uncaptioned = [n for n in names if n not in captions]
        if uncaptioned:
            raise _missing("flickr8k", root, text, f"the captions of {uncaptioned[0]} (in Flickr8k.token.txt)")
    files = [images / n for n in names]
    _need_files("flickr8k", root, files)
    return Captioned(files, [captions[n] for n in names])


def download_allowed() -> bool:
    """CIFAR may download through torchvision unless $KNOW_OFFLINE=1."""
    return os.environ.get("KNOW_OFFLINE", "0") != "1"


def _or_download(loader: Callable[[Path, str], Labeled], cls_name: str, root: Path, split: str) -> Labeled:
    """`loader(root, split)`, downloading through torchvision first when the files are missing and that is allowed."""
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


def load_cifar10_or_download(root: Path, split: str) -> Labeled:
    return _or_download(load_cifar10, "CIFAR10", root, split)


def load_cifar100_or_download(root: Path, split: str) -> Labeled:
    return _or_download(load_cifar100, "CIFAR100", root, split)


PAPER_DATASETS: dict[str, Callable[[Path, str], Labeled | Segmented | Captioned]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagenet": load_imagenet,
    "tinyimagenet": load_tinyimagenet,
    "stanford_cars": load_stanford_cars,
    "cub200": load_cub200,
    "flowers102": load_flowers102,
    "pacs": load_pacs,
    "voc": load_voc,
    "cityscapes": load_cityscapes,
    "flickr8k": load_flickr8k,
}
PAPER_SPLITS: dict[str, tuple[str, ...]] = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "imagenet": ("train", "val"),
    "tinyimagenet": ("train", "val"),
    "stanford_cars": ("train", "test"),
    "cub200": ("train", "test"),
    "flowers102": ("train", "val", "test"),
    "pacs": ("all",),
    "voc": ("train", "val", "trainval"),
    "cityscapes": ("train", "val"),  # test's public annotations are all "unlabeled"
    "flickr8k": ("all", "train", "dev", "test"),
}
