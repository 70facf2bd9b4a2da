"""The offline analogs of T-B..T-E: deterministic, well-formed, disjoint where promised, and each rendering checked
against a known answer."""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from know.datasets import analogs as A
from know.errors import DatasetMissing
from tests.conftest import require


@functools.cache
def build(name: str, *args: str):
    """One build per module run (they are deterministic), skipped when the offline source data is missing."""
    try:
        return A.ANALOGS[name](*args)
    except DatasetMissing as e:
        require(False, f"offline source data missing: {e}")


def raw(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return A._load(name, split, None)
    except DatasetMissing as e:
        require(False, f"offline source data missing: {e}")


SEGMENTATION = [(style, split) for style in ("source", "target") for split in ("train", "val", "test")]


# ------------------------------------------------------------------ renderings: known answers

def square(value: int = 200) -> torch.Tensor:
    x = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    x[..., 7:13, 7:13] = value
    return x


def test_photo_is_the_image():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(A.photo(x), x)


def test_sketch_known_answers():
    assert not A.sketch(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).any()  # nothing to outline
    assert (A.sketch(torch.full((2, 1, 28, 28), 90, dtype=torch.uint8)) == 90 // A.SKETCH_SHADING).all()  # no edge
    out = A.sketch(square(200))[0, 0]
    band = torch.zeros(20, 20, dtype=torch.bool)
    band[6:14, 6:14] = True
    band[8:12, 8:12] = False  # 1 px each side of the square's border: dilation - erosion = 200, stretched to 255
    assert (out[band] == 255).all()
    assert (out[8:12, 8:12] == 200 // A.SKETCH_SHADING).all()  # interior: faint shading only
    assert not out[~band & (out != 200 // A.SKETCH_SHADING)].any() and out[0, 0] == 0


def test_cartoon_known_answers():
    assert (A.cartoon(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)) == A.CARTOON_PAPER).all()  # an empty page
    out = A.cartoon(square(255))[0, 0]
    assert (out[8:12, 8:12] == 255).all()  # flat fill at the top level
    assert (out[6, 8:12] == 0).all() and (out[8:12, 13] == 0).all()  # black outline just outside the silhouette
    assert out[0, 0] == A.CARTOON_PAPER and out[19, 19] == A.CARTOON_PAPER
    levels = A.cartoon(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)).unique().tolist()
    assert set(levels) <= {0, A.CARTOON_PAPER, 85, 170, 255}


def test_art_known_answers():
    num, den = A.ART_BACKGROUND
    empty = A.art(torch.zeros(6, 1, 28, 28, dtype=torch.uint8))
    assert int(empty.max()) <= 255 * num // den and empty.float().std() > 10  # background texture only
    full = A.art(torch.full((6, 1, 28, 28), 255, dtype=torch.uint8))
    assert int(full.min()) >= 160  # the item, striped, 5/8 to full brightness
    assert not torch.equal(full[0], full[1])  # every image its own texture
    assert torch.equal(full, A.art(torch.full((6, 1, 28, 28), 255, dtype=torch.uint8)))


def test_integer_filters_match_torch():
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    windows = F.pad(x.float(), (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    assert torch.equal(A.median3(x).float(), windows.reshape(*x.shape, 9).median(-1).values)
    for r in (1, 2):
        assert torch.equal(A.dilate(x, r).float(), F.max_pool2d(x.float(), 2 * r + 1, 1, r))
        assert torch.equal(A.erode(x, r).float(), -F.max_pool2d(-x.float(), 2 * r + 1, 1, r))
    a, b, alpha = (np.random.default_rng(i).integers(0, 256, 4096) for i in range(3))
    assert np.array_equal(A._blend(a, b, alpha), np.rint((a * (255 - alpha) + b * alpha) / 255))


# ------------------------------------------------------------------ styles (T-C)

def test_styles_domains_and_photo():
    s = build("styles", "all")
    x, y = raw("fashion_mnist", "test")
    n = len(y)
    assert s.images.shape == (4 * n, 1, 28, 28) and s.images.dtype == torch.uint8
    assert s.domain_names == ["photo", "sketch", "cartoon", "art_painting"] and s.classes == A.FASHION_CLASSES
    assert torch.bincount(s.domains).tolist() == [n] * 4 and s.domains.dtype == torch.int64
    assert torch.equal(s.labels, y.repeat(4)) and 0 <= int(s.labels.min()) and int(s.labels.max()) == 9
    assert torch.equal(s.images[:n], x)  # photo = the t10k image itself
    for d, render in enumerate(A.RENDERINGS.values()):
        assert torch.equal(s.images[d * n:d * n + 50], render(x[:50]))  # item i of domain d at d * n + i
    with pytest.raises(ValueError):
        A.styles("train")


def test_styles_deterministic_and_thread_independent():
    first = build("styles", "all")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = A.styles()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first.images, again.images) and torch.equal(first.domains, again.domains)


# ------------------------------------------------------------------ two-digit MNIST (T-B)

def test_two_digit_mnist_pairs_from_their_own_split():
    halves = {}
    for split in ("train", "test"):
        x, y = raw("mnist10k", split)
        halves[split] = {bytes(img): int(lab) for img, lab in zip(F.pad(x, (2, 2, 2, 2)).numpy(), y)}
    for split, per_class in A.PAIRS_PER_CLASS.items():
        r = build("two_digit_mnist", split)
        assert r.images.shape == (100 * per_class, 1, 32, 64) and r.images.dtype == torch.uint8
        assert r.labels.dtype == torch.int64 and len(r.classes) == 100 and r.classes[42] == "42"
        assert torch.bincount(r.labels, minlength=100).tolist() == [per_class] * 100  # balanced
        for img, lab in zip(r.images.numpy(), r.labels.tolist()):
            left, right = bytes(np.ascontiguousarray(img[:, :, :32])), bytes(np.ascontiguousarray(img[:, :, 32:]))
            assert halves[split][left] == lab // 10 and halves[split][right] == lab % 10  # its own split only
    assert not set(halves["train"]) & set(halves["test"])  # the source splits share no image
    assert torch.equal(build("two_digit_mnist", "test").images, A.two_digit_mnist("test").images)


# ------------------------------------------------------------------ segmentation canvases (T-D)

@pytest.mark.parametrize("style,split", SEGMENTATION)
def test_segmentation_canvases_masks(style, split):
    r = build("segmentation_canvases", style, split)
    n = A.SEGMENTATION_SIZES[style][split]
    assert r.images.shape == (n, 3, 64, 64) and r.images.dtype == torch.uint8
    assert r.masks.shape == (n, 64, 64) and r.masks.dtype == torch.uint8
    assert len(r.classes) == 11 and r.classes[0] == "background"
    values = set(r.masks.unique().tolist())
    assert values <= set(range(11)) | {255} and 255 in values and len(values - {0, 255}) >= 8
    labelled = (r.masks > 0) & (r.masks < 255)
    assert labelled.flatten(1).any(1).all()  # every canvas holds items
    near = A.dilate(labelled.to(torch.uint8), A.BAND_RADIUS) > 0
    assert (near[r.masks == 255]).all()  # the band lies around regions
    assert not near[r.masks == 0].any()  # and separates them from the background
    grey = (r.images[:, 0] == r.images[:, 1]).all() and (r.images[:, 1] == r.images[:, 2]).all()
    assert bool(grey) == (style == "source")  # grey upstream, coloured downstream


def test_segmentation_region_covers_item_and_is_deterministic():
    r = build("segmentation_canvases", "target", "val")
    again = A.segmentation_canvases("target", "val")
    assert torch.equal(r.images, again.images) and torch.equal(r.masks, again.masks)
    with pytest.raises(ValueError):
        A.segmentation_canvases("target", "extra")


def test_pools_are_disjoint():
    """Images a split draws are never drawn by another split of the same builder from the same raw split."""
    for pools in (A.SEGMENTATION_POOLS.values(), A.CAPTION_POOLS.values()):
        for source in {p[:2] for p in pools}:
            raw(*source)
            drawn = [set(A._pool_indices(*p, None).tolist()) for p in pools if p[:2] == source]
            assert sum(len(d) for d in drawn) == len(set().union(*drawn))
    for (style, split), (_, _, lo, hi) in A.SEGMENTATION_POOLS.items():
        assert hi - lo >= 4 * A.SEGMENTATION_SIZES[style][split]  # never an image twice in segmentation


# ------------------------------------------------------------------ caption canvases (T-E)

def test_captions_known_answer():
    assert A.captions_of([7, 2, 8], ["red", "orange", "blue"], [0, 1, 2]) == [
        "three digits seven two and eight",
        "from left to right a red seven an orange two and a blue eight",
        "from right to left eight two and seven",
        "the number reads seven two eight",
        "a seven on the left a two in the middle and an eight on the right"]
    assert A.captions_of([4], ["white"], [2])[0::4] == ["one digit four", "a four on the right"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_caption_canvases(split):
    r = build("caption_canvases", split)
    n = A.CAPTION_SIZES[split]
    assert r.images.shape == (n, 3, 64, 64) and r.images.dtype == torch.uint8 and len(r) == n
    counts = []
    for caps in r.captions:
        assert len(caps) == 5 and len(set(caps)) == 5  # five annotators, five wordings
        assert {w for c in caps for w in c.split()} <= A.CAPTION_VOCAB
        counts.append(len(caps[3].split()) - 3)  # "the number reads d1 .. dk"
        assert caps[0].split()[0] == A.DIGIT_WORDS[counts[-1]]
    assert set(counts) == {1, 2, 3}
    lit = (r.images.flatten(1) > 0).sum(1)
    assert (lit > 0).all()  # every canvas shows its digits


def test_caption_canvases_deterministic():
    r = build("caption_canvases", "val")
    again = A.caption_canvases("val")
    assert torch.equal(r.images, again.images) and r.captions == again.captions
    assert set(A.ANALOGS) == {"styles", "two_digit_mnist", "segmentation_canvases", "caption_canvases"}
