"""The paper datasets' raw loaders read tiny copies of the real on-disk layouts (know.datasets.fake), through the
torchvision classes where they exist; missing files raise one-line DatasetMissing errors that say what to get."""
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from know.datasets import fake, paper
from know.datasets.records import Captioned, Labeled, Segmented
from know.errors import DatasetMissing

SIZE = (24, 40)  # (h, w): not square, so a swapped height and width shows


def _decoded(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def _check_files(rec, size=SIZE):
    """Every file exists and decodes to `size`; a labelled image's mean colour is its class's tint."""
    for i, f in enumerate(rec.images):
        assert f.is_file(), f
        pixels = _decoded(f)
        assert pixels.shape[:2] == size, f
        if isinstance(rec, Labeled):
            c = int(rec.labels[i]) + (len(rec.classes) * int(rec.domains[i]) if rec.domains is not None else 0)
            expected = fake.tint(c)[:1] if f.suffix == ".png" else fake.tint(c)  # PACS sketches: gray (red) only
            assert np.abs(pixels.mean((0, 1))[:len(expected)] - expected).max() < 8, (f, c)


def _check_labels(rec, n, num_classes, classes_seen=None):
    assert isinstance(rec, Labeled) and len(rec) == n and len(rec.images) == n
    assert rec.labels.dtype == torch.int64 and rec.labels.shape == (n,)
    assert len(rec.classes) == num_classes and 0 <= int(rec.labels.min()) and int(rec.labels.max()) < num_classes
    if classes_seen is not None:
        assert set(rec.labels.tolist()) == set(range(classes_seen))


@pytest.mark.parametrize("name, num_classes, n", [("cifar10", 10, {"train": 50, "test": 20}),
                                                  ("cifar100", 100, {"train": 200, "test": 100})])
def test_cifar_in_memory(tmp_path, name, num_classes, n):
    root = fake.FAKE_DATASETS[name](tmp_path)
    for split in ("train", "test"):
        rec = paper.PAPER_DATASETS[name](root, split)
        _check_labels(rec, n[split], num_classes)
        assert rec.images.dtype == torch.uint8 and rec.images.shape == (n[split], 3, 32, 32)
        assert rec.classes[0] == ("fake class 0" if name == "cifar10" else "fake fine 0")
    batch = "cifar-10-batches-py/test_batch" if name == "cifar10" else "cifar-100-python/test"
    entry = pickle.loads((tmp_path / batch).read_bytes())  # rows of R, G, B planes of 32 x 32
    assert torch.equal(rec.images[3], torch.from_numpy(entry["data"][3].reshape(3, 32, 32)))
    means = rec.images.double().mean((2, 3))
    assert all(np.abs(means[i].numpy() - fake.tint(int(y))).max() < 4 for i, y in enumerate(rec.labels))


@pytest.mark.parametrize("name, counts, first_class", [
    ("imagenet", {"train": 3 * 2, "val": 3 * 1}, "fake class 0"),
    ("tinyimagenet", {"train": 3 * 2, "val": 3 * 2}, "fake class 0"),
    ("stanford_cars", {"train": 3 * 2, "test": 3 * 2}, "Fake Make 0 2012"),
    ("cub200", {"train": 3 * 2, "test": 3 * 2}, "Fake_Bird_0"),
    ("flowers102", {"train": 3, "val": 3, "test": 3 * 2}, "pink primrose"),
])
def test_file_classification(tmp_path, name, counts, first_class):
    root = fake.FAKE_DATASETS[name](tmp_path, size=SIZE)
    assert tuple(counts) == paper.PAPER_SPLITS[name]
    for split, n in counts.items():
        rec = paper.PAPER_DATASETS[name](root, split)
        num_classes = 102 if name == "flowers102" else 3  # Flowers' names are torchvision's 102; the files use 3
        _check_labels(rec, n, num_classes, classes_seen=3)
        assert rec.classes[0] == first_class and rec.domains is None
        _check_files(rec)
    if name == "imagenet":  # the label is the wnid folder's index in sorted order
        assert [f.parent.name for f in rec.images] == [sorted({f.parent.name for f in rec.images})[y]
                                                        for y in rec.labels.tolist()]


def test_pacs_domains(tmp_path):
    root = fake.write_fake_pacs(tmp_path, size=SIZE)
    rec = paper.load_pacs(root, "all")
    _check_labels(rec, 4 * 3 * 2, 3, classes_seen=3)
    assert rec.classes == ["dog", "elephant", "giraffe"]
    assert rec.domain_names == ["art_painting", "cartoon", "photo", "sketch"]
    assert rec.domains.dtype == torch.int64 and rec.domains.bincount().tolist() == [6, 6, 6, 6]
    assert [f.parts[-3] for f in rec.images] == [rec.domain_names[d] for d in rec.domains.tolist()]
    assert {f.suffix for f, d in zip(rec.images, rec.domains) if d == 3} == {".png"}
    _check_files(rec)
    with pytest.raises(ValueError, match="all"):
        paper.load_pacs(root, "train")
    shutil.rmtree(root / "PACS" / "cartoon" / "elephant")
    with pytest.raises(DatasetMissing, match=r"elephant not found in .*cartoon"):
        paper.load_pacs(root, "all")


def test_voc_palette_masks(tmp_path):
    root = fake.write_fake_voc(tmp_path, train=3, val=2, size=SIZE)
    for split, n in {"train": 3, "val": 2, "trainval": 5}.items():
        rec = paper.load_voc(root, split)
        assert isinstance(rec, Segmented) and len(rec) == n == len(rec.masks)
        assert len(rec.classes) == 21 and rec.classes[0] == "background" and rec.classes[15] == "person"
        _check_files(rec)
        for m in rec.masks:
            mask = rec.decode_mask(m)
            with Image.open(m) as png:
                assert png.mode == "P" and png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
                assert png.getpalette()[3 * 255:3 * 256] == [224, 224, 192]
                assert torch.equal(mask, torch.from_numpy(np.array(png)))
            assert mask.dtype == torch.uint8 and mask.shape == SIZE
            values = set(mask.unique().tolist())
            assert 255 in values and values - {255} <= set(range(21)) and len(values - {0, 255}) >= 1
    with pytest.raises(ValueError, match="palette"):
        paper.decode_voc_mask(rec.images[0])  # an RGB JPEG is no class mask


def test_cityscapes_train_ids(tmp_path):
    root = fake.write_fake_cityscapes(tmp_path, size=SIZE)
    standard = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # labelId -> trainId; every other labelId -> 255
    for split, n in {"train": 4, "val": 2}.items():
        rec = paper.load_cityscapes(root, split)
        assert isinstance(rec, Segmented) and len(rec) == n
        assert len(rec.classes) == 19 and rec.classes[0] == "road" and rec.classes[18] == "bicycle"
        assert rec.images == sorted(rec.images)
        assert [m.name.replace("gtFine_labelIds", "leftImg8bit") for m in rec.masks] == [i.name for i in rec.images]
        _check_files(rec)
        for m in rec.masks:
            with Image.open(m) as png:
                ids = np.array(png)
            expected = np.vectorize(lambda i: standard.get(int(i), 255))(ids).astype(np.uint8)
            train_ids = rec.decode_mask(m)
            assert train_ids.dtype == torch.uint8 and torch.equal(train_ids, torch.from_numpy(expected))
            assert {0, 10, 255} <= set(train_ids.unique().tolist())  # road, sky, the ego vehicle (ignored)
    with pytest.raises(ValueError, match="train, val"):
        paper.load_cityscapes(root, "test")


@pytest.mark.parametrize("images_folder, text_folder", [("Flicker8k_Dataset", ""),
                                                        ("Flickr8k_Dataset", "Flickr8k_text")])
def test_flickr8k_captions(tmp_path, images_folder, text_folder):
    root = fake.write_fake_flickr8k(tmp_path, images=10, captions=5, size=SIZE, images_folder=images_folder,
                                    text_folder=text_folder)
    lines = (tmp_path / text_folder / "Flickr8k.token.txt").read_text().splitlines()
    rec = paper.load_flickr8k(root, "all")
    assert isinstance(rec, Captioned) and len(rec) == 10 == len(rec.images)
    assert [f.name for f in rec.images] == list(dict.fromkeys(line.split("#")[0] for line in lines[:50]))
    assert all(len(c) == 5 for c in rec.captions)  # the stray "<image>.jpg.1#n" lines are dropped
    assert rec.captions[0] == [line.split("\t")[1] for line in lines[:5]] and rec.captions[0][0].endswith(" .")
    assert all(f.parent.name == images_folder for f in rec.images)
    _check_files(rec)
    splits = {s: paper.load_flickr8k(root, s) for s in ("train", "dev", "test")}
    assert [len(r) for r in splits.values()] == [6, 2, 2]
    assert sorted(f for r in splits.values() for f in r.images) == sorted(rec.images)
    (tmp_path / text_folder / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DatasetMissing, match="Flickr_8k.devImages.txt not found"):
        paper.load_flickr8k(root, "dev")


DOWNLOADS = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz", "imagenet": "image-net.org",
             "tinyimagenet": "tiny-imagenet-200.zip", "stanford_cars": "car_dataset", "cub200": "CUB_200_2011.tgz",
             "flowers102": "102flowers.tgz", "pacs": "DomainBed", "voc": "VOCtrainval_11-May-2012.tar",
             "cityscapes": "cityscapes-dataset.com", "flickr8k": "Flickr8k_Dataset.zip"}


@pytest.mark.parametrize("name", sorted(paper.PAPER_DATASETS))
def test_missing_dataset_says_what_to_get(tmp_path, name):
    assert set(DOWNLOADS) == set(paper.PAPER_DATASETS) == set(paper.PAPER_SPLITS) == set(fake.FAKE_DATASETS)
    with pytest.raises(DatasetMissing) as e:
        paper.PAPER_DATASETS[name](tmp_path, paper.PAPER_SPLITS[name][0])
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{name}: ") and str(tmp_path) in message
    assert DOWNLOADS[name] in message and f"into {tmp_path}" in message
    with pytest.raises(ValueError, match="splits"):
        paper.PAPER_DATASETS[name](tmp_path, "nosuchsplit")


@pytest.mark.parametrize("name, remove, split, named", [
    ("cifar10", "cifar-10-batches-py/data_batch_3", "test", r"data_batch_3 not found in .*cifar-10-batches-py"),
    ("imagenet", "meta.bin", "val", "meta.bin or ILSVRC2012_devkit_t12.tar.gz not found"),
    ("tinyimagenet", "tiny-imagenet-200/val/val_annotations.txt", "val", "val_annotations.txt not found"),
    ("stanford_cars", "stanford_cars/devkit/cars_meta.mat", "test", "devkit/cars_meta.mat not found"),
    ("cub200", "CUB_200_2011/images/002.Fake_Bird_1/Fake_Bird_1_0000_5.jpg", "train",
     r"Fake_Bird_1_0000_5.jpg not found in .*002.Fake_Bird_1"),
    ("flowers102", "flowers-102/jpg/image_00002.jpg", None, r"image_00002.jpg not found in .*flowers-102/jpg"),
    ("voc", "VOCdevkit/VOC2012/SegmentationClass/2007_000004.png", "val", "2007_000004.png not found"),
    ("cityscapes", "gtFine/val", "val", "gtFine/val or gtFine_trainvaltest.zip not found"),
])
def test_missing_file_is_named(tmp_path, name, remove, split, named):
    root = fake.FAKE_DATASETS[name](tmp_path)
    path = tmp_path / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    splits = [split] if split else paper.PAPER_SPLITS[name]  # flowers: whichever split lists the image
    with pytest.raises(DatasetMissing, match=named):
        for s in splits:
            paper.PAPER_DATASETS[name](root, s)


def test_torchvision_errors_become_dataset_missing(tmp_path):
    """Past our own checks, torchvision's errors (here ImageFolder finding no class folder) still read the same."""
    root = fake.write_fake_imagenet(tmp_path)
    for wnid in (tmp_path / "val").iterdir():
        shutil.rmtree(wnid)
    with pytest.raises(DatasetMissing, match=r"imagenet: what torchvision needs \(Couldn't find any class folder"):
        paper.load_imagenet(root, "val")
