"""KNOWN against the official Keras outputs, weight-file lookup and checks, our safetensors format."""
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import REFERENCE, require
from know import known
from know.errors import UnknownName, WeightsError
from know.fastknown import FastKNOWN
from know.known import KNOWN, load_known, load_official, save_known

KINDS = ("conv", "fc", "bias")


@pytest.fixture(scope="module")
def ref_dir() -> Path:
    d = Path(os.environ.get("KNOW_WEIGHTS_DIR") or REFERENCE / "known_keras")
    files = [known.OFFICIAL_KNOWN[k].filename for k in KINDS] + ["known_vectors.npz", "known_helpers.npz"]
    require(all((d / f).is_file() for f in files), f"official KNOWN files missing in {d}: set $KNOW_WEIGHTS_DIR")
    return d


@pytest.fixture(scope="module")
def models(ref_dir):
    return {k: load_official(k, ref_dir) for k in KINDS}


@pytest.fixture(scope="module")
def vectors(ref_dir):
    return dict(np.load(ref_dir / "known_vectors.npz"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No env dir, an empty cache, and downloads that fail at once."""
    monkeypatch.delenv("KNOW_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(known, "KNOWN_URL_BASE", (tmp_path / "no-such-server").as_uri())


def test_shapes_and_parameter_count():
    m = KNOWN()
    assert sum(p.numel() for p in m.parameters()) == 9425
    out = m(torch.randn(7, 5), torch.randn(7, 4))
    assert out.shape == (7, 1) and torch.isfinite(out).all()
    for w in (2, 3, 4):
        assert KNOWN(window=w)(torch.randn(3, w), torch.randn(3, w - 1)).shape == (3, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_vectors(models, vectors, kind):
    x, dx = torch.from_numpy(vectors["x"]), torch.from_numpy(vectors["dx"])
    want, group_a = vectors[f"y_{kind}"], vectors["group"] == 0
    m = models[kind]
    with torch.no_grad():
        outputs = {"layered": m(x, dx).numpy(), "fast": FastKNOWN(m)(x).numpy()}
    for name, got in outputs.items():
        err = np.abs(got - want)
        assert err.max() <= 2e-6, f"{kind} {name}: max err {err.max()}"
        assert err[group_a].max() <= 1e-7, f"{kind} {name}: group (a) max err {err[group_a].max()}"
    # step(): same numbers as x[:, -1] + output, with dx computed inside
    new = m.step(x).numpy()
    assert np.abs(new - (vectors["x"][:, 4] + want[:, 0])).max() <= 2e-6


def test_grad_path_matches_fast_path(models, vectors):
    """The autograd path (used in meta-training) and the fast inference path (FastKNOWN) agree."""
    m = KNOWN()
    m.load_state_dict(models["fc"].state_dict())
    x, dx = torch.from_numpy(vectors["x"]), torch.from_numpy(vectors["dx"])
    y_grad = m(x, dx)
    assert y_grad.requires_grad
    assert (y_grad.detach() - FastKNOWN(m)(x)).abs().max() <= 2e-6


def _official_helper(model: KNOWN, window: np.ndarray) -> np.ndarray:
    """The official helper: rows of 5 along the last (time) axis, C order; new = x[:, 4] + out."""
    rows = torch.from_numpy(np.ascontiguousarray(window).reshape(-1, window.shape[-1]))
    return model.step(rows).numpy().reshape(window.shape[:-1])


@pytest.mark.parametrize("kind", KINDS)
def test_helper_recurrence(ref_dir, models, kind):
    h = np.load(ref_dir / "known_helpers.npz")
    window = h[f"{kind}_init"].copy()
    for s in range(3):
        np.testing.assert_array_equal(window, h[f"{kind}_windows"][s])  # our window never drifts from theirs
        pred = _official_helper(models[kind], window)
        err = np.abs(pred - h[f"{kind}_preds"][s]).max()
        assert err <= 1e-6, f"{kind} step {s}: max err {err}"
        window = np.concatenate([window[..., 1:], h[f"{kind}_preds"][s][..., None]], axis=-1)
    np.testing.assert_array_equal(window, h[f"{kind}_final_window"])


def test_intermediates_layer_by_layer(ref_dir, models):
    path = ref_dir / "known_intermediates.npz"
    if not path.is_file():
        pytest.skip("known_intermediates.npz not present")
    z = np.load(path)
    x, dx = torch.from_numpy(z["x"]), torch.from_numpy(z["dx"])
    m = models["conv"]
    with torch.no_grad():
        h = m.branch_x.lift(x)
        zc = torch.relu(m.branch_x.compress(h))
        e = torch.exp(m.branch_x.rate(zc) * h)
        a = m.branch_x(x)
        cat = torch.cat([a, m.branch_dx(dx)], dim=1)
    for got, key in [(h, "dense"), (zc, "dense_1"), (e, "lambda"), (a, "leaky_re_lu"), (cat, "concatenate")]:
        want = z[f"conv__{key}"]
        assert np.abs(got.numpy() - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), key


def test_unknown_kind():
    with pytest.raises(UnknownName, match="conv, fc, bias"):
        load_official("attention")


def test_swapped_file_is_named(ref_dir, tmp_path):
    shutil.copy(ref_dir / "KNOWN_FC.h5", tmp_path / "KNOWN_Conv.h5")
    with pytest.raises(WeightsError, match="this is KNOWN_FC.h5, not KNOWN_Conv.h5"):
        load_official("conv", tmp_path)


def test_truncated_file(ref_dir, tmp_path):
    data = (ref_dir / "KNOWN_Bias.h5").read_bytes()
    (tmp_path / "KNOWN_Bias.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupted") as e:
        load_official("bias", tmp_path)
    assert "\n" not in str(e.value)


def test_missing_file_offline(offline, tmp_path):
    with pytest.raises(WeightsError) as e:
        load_official("fc", tmp_path / "empty")
    msg = str(e.value)
    assert "KNOWN_FC.h5 not found" in msg and str(tmp_path / "empty") in msg and "KNOW_WEIGHTS_DIR" in msg
    assert "\n" not in msg


def test_env_and_cache_lookup(ref_dir, offline, monkeypatch, tmp_path):
    """$KNOW_WEIGHTS_DIR is searched, then the cache; a 'download' lands in the cache after its sha check."""
    monkeypatch.setenv("KNOW_WEIGHTS_DIR", str(ref_dir))
    assert load_official("bias").meta["sha256"] == known.OFFICIAL_KNOWN["bias"].sha256
    monkeypatch.delenv("KNOW_WEIGHTS_DIR")
    monkeypatch.setattr(known, "KNOWN_URL_BASE", ref_dir.as_uri())  # a file:// "server"
    m = load_official("conv")
    assert (tmp_path / "cache" / "know" / "official" / "KNOWN_Conv.h5").is_file()
    assert not [p for p in (tmp_path / "cache" / "know" / "official").iterdir() if p.name.startswith(".")]
    assert m.meta["kind"] == "conv"


def test_bad_download_is_not_kept(ref_dir, offline, monkeypatch, tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(ref_dir / "KNOWN_Bias.h5", server / "KNOWN_Conv.h5")
    monkeypatch.setattr(known, "KNOWN_URL_BASE", server.as_uri())
    with pytest.raises(WeightsError, match="this is KNOWN_Bias.h5"):
        load_official("conv")
    assert not list((tmp_path / "cache" / "know" / "official").iterdir())


def test_structurally_broken_h5(tmp_path):
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f["dense/dense/kernel:0"] = np.zeros((5, 64), np.float32)  # everything else missing
        f["dense/dense/bias:0"] = np.zeros(64, np.float32)
    with pytest.raises(WeightsError, match="dense_1/dense_1/kernel:0 is missing"):
        known.load_keras_dense(KNOWN(), path, known.KNOWN_KERAS_NAMES)
    with h5py.File(path, "a") as f:
        del f["dense/dense/kernel:0"]
        f["dense/dense/kernel:0"] = np.zeros((64, 5), np.float32)  # transposed by mistake
    with pytest.raises(WeightsError, match="shape"):
        known.load_keras_dense(KNOWN(), path, known.KNOWN_KERAS_NAMES)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(WeightsError, match="not a readable Keras weights file"):
        known.load_keras_dense(KNOWN(), tmp_path / "junk.h5", known.KNOWN_KERAS_NAMES)


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    models = {"conv": KNOWN(), "bias": KNOWN(window=3)}
    meta = {"training_data": "synthetic", "metrics": {"val_mae": 0.01}, "code_version": "test"}
    save_known(models, tmp_path / "m.safetensors", meta)
    back = load_known(tmp_path / "m.safetensors")
    assert set(back) == {"conv", "bias"} and back["bias"].window == 3
    x = torch.randn(50, 5) * 0.1
    assert torch.equal(back["conv"].step(x), models["conv"].step(x))
    assert back["conv"].meta["metrics"] == {"val_mae": 0.01} and back["conv"].meta["kind"] == "conv"
    single = save_known(models["conv"], tmp_path / "one.safetensors", {"kind": "conv", "window": 5})
    one = load_known(single)
    assert isinstance(one, KNOWN) and one.meta == {"kind": "conv", "window": 5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_truncated_safetensors(tmp_path):
    path = save_known(KNOWN(), tmp_path / "m.safetensors", {"kind": "fc"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(WeightsError, match="not a readable KNOWN safetensors"):
        load_known(path)
    path.write_bytes(data[:5])
    with pytest.raises(WeightsError):
        load_known(path)
    with pytest.raises(WeightsError, match="no such"):
        load_known(tmp_path / "absent.safetensors")
