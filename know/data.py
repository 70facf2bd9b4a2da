"""Datasets as device-resident tensors, nested progressive subsets, batched augmentation.

Convention every model accepts (`get_dataset`): images are float32 tensors (N, C, H, W) scaled to [0, 1], then
normalised either by subtracting the per-pixel mean of the *training* split (`norm="pixel_mean"`, as the paper's
Keras scripts do) or by ImageNet's channel mean and std (`norm="imagenet"`, what timm's pretrained weights expect).
Targets sit in `y`: class labels (N,), or segmentation masks (N, H, W) with 255 = ignore; captions are a list.
Channels and size are adapted by one documented transform (`adapt`): gray -> RGB by repeating the channel when
`channels=3`; images smaller than `size` are zero-padded to it when the gap is small (28x28 -> 32x32, 2 pixels each
side) and upsampled by an integer nearest-neighbour factor otherwise (8x8 digits -> 32x32); larger images are
area-downsampled (28x28 -> 16x16). A set stored small and used large (CIFAR's 32x32 fed to a 224x224 PVTv2) keeps
its stored size and is resized per batch on the device (`ImageSet.take`, bilinear: the authors' PVTv2 code resizes
CIFAR 32 -> 224 the same way), so memory holds the small copy only.

Raw loaders and the registry of names live in `know.datasets`; file-backed datasets (ImageNet-style folders) are
decoded once at the requested size and kept as a uint8 cache beside the data (`_decoded/`).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from know import datasets, kernels
from know.datasets.records import Captioned, Labeled, Segmented
from know.datasets.root import data_root  # noqa: F401  (re-exported: know.data.data_root)
from know.errors import DatasetMissing, UnknownName
from know.io import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN / STD
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMS = ("pixel_mean", "imagenet")


@dataclass
class ImageSet:
    """A split of a dataset in the common convention.

    `mean` is what was subtracted (per pixel (C, H, W), or per channel (C, 1, 1) with `std` for norm="imagenet").
    `out_size` (h, w), when set and different from the stored size, resizes every batch that `take` returns.
    `domains` (N,) marks multi-domain sets (PACS, styles); `captions` holds each image's reference captions.
    """

    x: torch.Tensor  # (N, C, H, W) float32
    y: torch.Tensor | None  # labels (N,) int64, or masks (N, H, W) uint8 (255 = ignore); None for captions
    num_classes: int
    name: str
    split: str
    mean: torch.Tensor
    std: torch.Tensor | None = None
    out_size: tuple[int, int] | None = None
    domains: torch.Tensor | None = None
    domain_names: list[str] | None = None
    captions: list[list[str]] | None = None
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what `take` returns."""
        c, h, w = self.x.shape[1:]
        return (c, *self.out_size) if self.out_size else (c, h, w)

    def to(self, device) -> "ImageSet":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, x=self.x.to(device), y=move(self.y), mean=self.mean.to(device), std=move(self.std),
                       domains=move(self.domains))

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        idx = idx.to(self.x.device)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        captions = None if self.captions is None else [self.captions[i] for i in idx.tolist()]
        return replace(self, x=self.x[idx], y=pick(self.y), domains=pick(self.domains), captions=captions)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of stored images at `out_size` (bilinear; unchanged when no resize is asked)."""
        if self.out_size is None or tuple(x.shape[-2:]) == self.out_size:
            return x
        return F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False,
                             antialias=self.out_size[0] < x.shape[-2])

    def take(self, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, targets) of `idx`, images at `out_size`; masks are resized with them (nearest)."""
        x, y = self.x[idx], None if self.y is None else self.y[idx]
        if self.out_size is not None and tuple(x.shape[-2:]) != self.out_size:
            x = self.resize(x)
            if y is not None and y.dim() == 3:
                y = F.interpolate(y[:, None].float(), size=self.out_size, mode="nearest")[:, 0].to(y.dtype)
        return x, y


# ---------------------------------------------------------------- decoding image files once

def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def decode_images(files: list[Path], size: int | tuple[int, int], channels: int = 3) -> torch.Tensor:
    """uint8 (N, channels, h, w): every file decoded with PIL and resized (bilinear) to `size`."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    h, w = _size_hw(size)
    mode = "L" if channels == 1 else "RGB"

    def one(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR))
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL while decoding
        return torch.from_numpy(np.stack(list(pool.map(one, files)))) if files else \
            torch.zeros(0, channels, h, w, dtype=torch.uint8)


def decode_masks(files: list[Path], decode, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 (N, h, w) class ids (255 = ignore): each mask file decoded by `decode`, resized nearest to `size`."""
    h, w = _size_hw(size)
    out = torch.empty(len(files), h, w, dtype=torch.uint8)
    for i, f in enumerate(files):
        m = decode(f)[None, None].float()
        out[i] = F.interpolate(m, size=(h, w), mode="nearest")[0, 0].to(torch.uint8)
    return out


def _cached(folder: Path, key: str, make) -> dict[str, np.ndarray]:
    """Arrays made by `make()` and kept in `folder/<key>.npz` (written atomically; a read-only root recomputes)."""
    path = folder / f"{key}.npz"
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # missing, truncated or foreign: (re)build
        pass
    arrays = make()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    try:
        atomic_write(path, write)
    except OSError:
        pass
    return arrays


def _files_key(name: str, split: str, files: list[Path], size, channels: int) -> str:
    """A cache name that changes with the file list and the decoding (not with the files' content)."""
    h = hashlib.sha256("\n".join(map(str, files)).encode() + repr((size, channels)).encode()).hexdigest()[:12]
    return f"{name}-{split}-{h}"


# ---------------------------------------------------------------- the common convention

def adapt(images: torch.Tensor, channels: int | None, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Adapt uint8 (N, C, H, W) to `channels` and `size` (see module docstring)."""
    if channels is not None and images.shape[1] != channels:
        if images.shape[1] != 1:
            raise ValueError(f"cannot adapt {images.shape[1]} channels to {channels}")
        images = images.expand(-1, channels, -1, -1)
    if size is None:
        return images.contiguous()
    (th, tw), (h, w) = _size_hw(size), images.shape[-2:]
    if (h, w) == (th, tw):
        return images.contiguous()
    if h >= th and w >= tw:  # smaller: area average (exact for integer factors)
        return F.interpolate(images.float(), size=(th, tw), mode="area").round().to(torch.uint8)
    if th % h == 0 and tw % w == 0 and th // h == tw // w >= 2:
        f = th // h
        return images.repeat_interleave(f, dim=-1).repeat_interleave(f, dim=-2).contiguous()
    if h > th or w > tw:
        raise ValueError(f"cannot adapt images of size {h}x{w} to {th}x{tw}")
    top, left = (th - h) // 2, (tw - w) // 2
    return F.pad(images, (left, tw - w - left, top, th - h - top)).contiguous()


@functools.lru_cache(maxsize=8)
def _record(name: str, split: str, root: str):
    return datasets.load(name, Path(root), split)


def _materialise(name: str, split: str, root: str, channels: int | None, size) -> dict:
    """{"images": uint8 (N, C, H, W), "y": targets or None, ...} of a record, file-backed images decoded (cached)."""
    rec = _record(name, split, root)
    out = {"record": rec}
    if isinstance(rec.images, torch.Tensor):
        out["images"] = rec.images
    else:
        dec_size, ch = size or 224, channels or 3  # files have no native size: decode at the requested one
        key = _files_key(name, split, list(rec.images), dec_size, ch)
        arrays = _cached(Path(root) / "_decoded", key, lambda: {
            "images": decode_images(list(rec.images), dec_size, ch).numpy(),
            **({"masks": decode_masks(list(rec.masks), rec.decode_mask, dec_size).numpy()}
               if isinstance(rec, Segmented) and not isinstance(rec.masks, torch.Tensor) else {})})
        out["images"] = torch.from_numpy(arrays["images"])
        if "masks" in arrays:
            out["masks"] = torch.from_numpy(arrays["masks"])
    if isinstance(rec, Segmented) and "masks" not in out:
        out["masks"] = rec.masks
    return out


def get_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                channels: int | None = None, size: int | tuple[int, int] | None = 32, norm: str = "pixel_mean",
                out_size: int | tuple[int, int] | None = None, device: str | torch.device = "cpu") -> ImageSet:
    """Load `split` of dataset `name` (see `know.datasets.DATASETS`) in the common convention, on `device`.

    channels: 1 or 3 to force the channel count (None keeps the dataset's); size: stored side length or (h, w)
    (None keeps it; image files are decoded at it); out_size: the size `take` returns (None: as stored); norm: see
    the module docstring. CIFAR downloads when missing unless $KNOW_OFFLINE=1.
    The last few sets loaded stay in memory, so a process that trains many runs on one dataset prepares it once;
    their tensors are shared: never modify them in place.
    """
    datasets.entry(name)
    if norm not in NORMS:
        raise UnknownName(f"unknown normalisation '{norm}'; known: {', '.join(NORMS)}")
    size = None if size is None else _size_hw(size)
    out_size = None if out_size is None else _size_hw(out_size)
    return _prepared(name, split, str(data_root(root)), channels, size, norm, out_size, str(torch.device(device)))


def train_split(name: str) -> str:
    """The split whose statistics normalise a dataset (the per-pixel mean): its training split."""
    splits = datasets.entry(name).splits
    return "train" if "train" in splits else splits[0]


@functools.lru_cache(maxsize=4)
def _prepared(name: str, split: str, root: str, channels: int | None, size, norm: str, out_size,
              device: str) -> ImageSet:
    data = _materialise(name, split, root, channels, size)
    rec, images = data["record"], adapt(data["images"], channels, size)
    if norm == "pixel_mean":
        ref = split if split == train_split(name) else train_split(name)
        train_images = images if ref == split else adapt(_materialise(name, ref, root, channels, size)["images"],
                                                         channels, size)
        mean, std = train_images.to(torch.float32).mean(0) / 255, None  # per-pixel train mean (C, H, W)
    else:
        c = images.shape[1]
        mean = torch.tensor(IMAGENET_MEAN[:c] if c == 3 else [sum(IMAGENET_MEAN) / 3]).view(c, 1, 1)
        std = torch.tensor(IMAGENET_STD[:c] if c == 3 else [sum(IMAGENET_STD) / 3]).view(c, 1, 1)
    x = images.to(device=device, dtype=torch.float32).div_(255).sub_(mean.to(device))
    if std is not None:
        x.div_(std.to(device))
    y, num_classes = None, len(getattr(rec, "classes", []) or [])
    if isinstance(rec, Labeled):
        y = rec.labels.to(device)
    elif isinstance(rec, Segmented):
        y = adapt_masks(data["masks"], size).to(device)
    domains = rec.domains.to(device) if isinstance(rec, Labeled) and rec.domains is not None else None
    return ImageSet(x, y, num_classes, name, split, mean.to(device), None if std is None else std.to(device),
                    out_size, domains, getattr(rec, "domain_names", None),
                    rec.captions if isinstance(rec, Captioned) else None, list(getattr(rec, "classes", []) or []))


def adapt_masks(masks: torch.Tensor, size) -> torch.Tensor:
    """Masks (N, H, W) to `size` with the geometry `adapt` gives the images (nearest; padding is ignore = 255)."""
    if size is None or tuple(masks.shape[-2:]) == tuple(size):
        return masks
    (th, tw), (h, w) = size, masks.shape[-2:]
    if h >= th and w >= tw or (th % h == 0 and tw % w == 0):
        return F.interpolate(masks[:, None].float(), size=(th, tw), mode="nearest")[:, 0].to(torch.uint8)
    top, left = (th - h) // 2, (tw - w) // 2
    return F.pad(masks, (left, tw - w - left, top, th - h - top), value=255)


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

    def apply(self, x: torch.Tensor, y, generator: torch.Generator | None = None):
        """A batch (images, targets): the images warped, the targets (class labels) as they are."""
        return self(x, generator), y

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

    p = argparse.ArgumentParser(prog="know data", description="List datasets and check which load here (offline: "
                                "nothing is downloaded). Image-file datasets are decoded once at --size.")
    p.add_argument("names", nargs="*", help="datasets to check (default: all)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $KNOW_DATA or ~/.cache/know/data)")
    p.add_argument("--size", type=int, default=None, help="side length to decode image files at (default: 224)")
    args = p.parse_args(argv)
    os.environ["KNOW_OFFLINE"] = "1"
    for name in args.names or list(datasets.DATASETS):
        entry = datasets.entry(name)
        try:
            sets = [get_dataset(name, s, args.data_root, size=args.size) for s in dict.fromkeys(
                    (train_split(name), entry.test_split))]
            sizes = "  ".join(f"{s.split} {len(s):7d}" for s in sets)
            print(f"{name:14s} ok       {sizes}  shape {sets[0].shape}  classes {sets[0].num_classes}")
        except (DatasetMissing, UnknownName) as e:
            print(f"{name:14s} MISSING  {e}")
    return 0
