"""WNN: weight import against the released Keras files, the application rule against the official helpers and
callback (the authors' reference outputs beside $KNOW_WNN_WEIGHTS_DIR, tolerances from docs/known_spec.md §13), and the predictor behind know.predict."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import REFERENCE, require
from know import known, wnn
from know.errors import KnowError, UnknownName, WeightsError
from know.known import load_wnn
from know.fastknown import FastKNOWN, load_kernel
from know.predict import create_predictor, predict
from know.trajectory import Trajectory
from know.wnn import WNNPredictor, denormalise, normalise_history

KINDS = ("conv", "fc", "bias")
ATOL_Y = {"conv": 3e-6, "fc": 2e-5, "bias": 1e-6}  # network outputs on [xn, dxn]
ATOL_Y_RAW = {"conv": 5e-6, "fc": 2e-5, "bias": 5e-6}  # network outputs on raw [x, dx]
# README: Keras's positional load pairs the Dense entries of `layer_names` with these roles, in this order
POSITIONAL_ROLES = ["branch_x.lift", "branch_dx.lift", "branch_x.compress", "branch_dx.compress", "branch_x.rate",
                    "branch_dx.rate", "branch_x.gain", "branch_dx.gain", "branch_x.additive", "branch_dx.additive",
                    "branch_x.project", "branch_dx.project", "head"]


@pytest.fixture(scope="module")
def ref_dir() -> Path:
    d = Path(os.environ.get("KNOW_WNN_WEIGHTS_DIR") or REFERENCE / "wnn_keras")
    files = [known.OFFICIAL_WNN[k].filename for k in KINDS] + ["wnn_vectors.npz", "wnn_apply.npz"]
    require(all((d / f).is_file() for f in files), f"WNN reference files missing in {d}: set $KNOW_WNN_WEIGHTS_DIR")
    return d


@pytest.fixture(scope="module")
def models(ref_dir):
    return {k: load_wnn(k, ref_dir) for k in KINDS}


@pytest.fixture(scope="module")
def vectors(ref_dir):
    return dict(np.load(ref_dir / "wnn_vectors.npz"))


@pytest.fixture(scope="module")
def applied(ref_dir):
    return dict(np.load(ref_dir / "wnn_apply.npz"))


@pytest.fixture
def env(ref_dir, monkeypatch):
    """Predictors built by name find the weights through the environment."""
    monkeypatch.setenv("KNOW_WNN_WEIGHTS_DIR", str(ref_dir))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.delenv("KNOW_WNN_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(known, "WNN_URL_BASE", (tmp_path / "no-such-server").as_uri())


def backends():
    return ["torch"] + (["c"] if load_kernel() is not None else [])


# ------------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("kind", KINDS)
def test_names_match_positional_load(ref_dir, models, kind):
    """Name minus offset = Keras's positional load; every Linear equals its dataset bit for bit."""
    with h5py.File(ref_dir / known.OFFICIAL_WNN[kind].filename, "r") as f:
        layer_names = [n.decode() for n in f.attrs["layer_names"]]
        dense = [n for n in layer_names if n.startswith("dense") and len(f[n].attrs["weight_names"])]
        assert dict(zip(POSITIONAL_ROLES, dense)) == known.wnn_keras_names(kind)
        m = models[kind]
        for sub, name in zip(POSITIONAL_ROLES, dense):
            lin = m.get_submodule(sub)
            assert np.array_equal(lin.weight.numpy().T, f[f"{name}/{name}/kernel:0"][()]), sub
            assert np.array_equal(lin.bias.numpy(), f[f"{name}/{name}/bias:0"][()]), sub
    assert sum(p.numel() for p in m.parameters()) == 9425
    assert m.meta == {"kind": kind, "source": "wnn", "file": known.OFFICIAL_WNN[kind].filename,
                      "sha256": known.OFFICIAL_WNN[kind].sha256}


def test_unknown_kind():
    with pytest.raises(UnknownName, match="conv, fc, bias"):
        load_wnn("attention")


def test_swapped_file_is_named(ref_dir, tmp_path):
    shutil.copy(ref_dir / "NWNN_FC_13.h5", tmp_path / "NWNN_Conv_13.h5")
    with pytest.raises(WeightsError, match="this is NWNN_FC_13.h5, not NWNN_Conv_13.h5"):
        load_wnn("conv", tmp_path)


def test_truncated_file(ref_dir, tmp_path):
    data = (ref_dir / "NWNN_Bias_13.h5").read_bytes()
    (tmp_path / "NWNN_Bias_13.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupted") as e:
        load_wnn("bias", tmp_path)
    assert "of 93512 bytes" in str(e.value) and "KNOW_WNN_WEIGHTS_DIR" in str(e.value) and "\n" not in str(e.value)


def test_missing_file_offline(offline, tmp_path):
    with pytest.raises(WeightsError) as e:
        load_wnn("fc", tmp_path / "empty")
    msg = str(e.value)
    assert "NWNN_FC_13.h5 not found" in msg and str(tmp_path / "empty") in msg
    assert "KNOW_WNN_WEIGHTS_DIR" in msg and str(tmp_path / "cache" / "know" / "wnn") in msg


def test_env_and_cache_lookup(ref_dir, offline, monkeypatch, tmp_path):
    monkeypatch.setenv("KNOW_WNN_WEIGHTS_DIR", str(ref_dir))
    assert load_wnn("bias").meta["sha256"] == known.OFFICIAL_WNN["bias"].sha256
    monkeypatch.delenv("KNOW_WNN_WEIGHTS_DIR")
    monkeypatch.setattr(known, "WNN_URL_BASE", ref_dir.as_uri())  # a file:// "server"
    assert load_wnn("conv").meta["kind"] == "conv"
    assert (tmp_path / "cache" / "know" / "wnn" / "NWNN_Conv_13.h5").is_file()


# ------------------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("kind", KINDS)
def test_network_outputs(models, vectors, kind):
    """On the exact Keras inputs [xn, dxn] (FastKNOWN folds dx from xn instead: still within tolerance)."""
    xn, dxn = torch.from_numpy(vectors["xn"]), torch.from_numpy(vectors["dxn"])
    m, want = models[kind], vectors[f"y_{kind}"]
    outs = {"layered": m(xn, dxn)}
    outs.update({f"fast-{b}": FastKNOWN(m, backend=b)(xn) for b in backends()})
    for name, y in outs.items():
        err = np.abs(y.numpy() - want).max()
        assert err <= ATOL_Y[kind], f"{kind} {name}: max err {err}"


@pytest.mark.parametrize("kind", KINDS)
def test_raw_outputs_and_exp_overflow(models, vectors, kind, env):
    """Un-normalised inputs (PVTv2 helpers): exp overflows in float32 on two FC rows; Keras gives -1.0, never NaN."""
    x, dx = torch.from_numpy(vectors["x"]), torch.from_numpy(vectors["dx_raw"])
    m, want, over = models[kind], vectors[f"y_raw_{kind}"][:, 0], vectors[f"raw_exp_overflow_{kind}"]
    outs = {"layered": m(x, dx)[:, 0]}
    outs.update({f"fast-{b}": FastKNOWN(m, backend=b)(x)[:, 0] for b in backends()})
    for name, y in outs.items():
        y = y.numpy()
        assert np.isfinite(y).all(), name
        assert np.abs(y - want)[~over].max() <= ATOL_Y_RAW[kind], f"{kind} {name}"
        assert np.array_equal(y[over], want[over]), name  # exactly -1.0
    assert over.sum() == (2 if kind == "fc" else 0)
    new = WNNPredictor(normalise=False).step_rows(list(x.T), kind, "w").numpy()  # new = w4 + net(w, Δw)
    want_new = vectors["x"][:, 4] + want  # float32, like the official helper
    assert np.abs(new - want_new)[~over].max() <= ATOL_Y_RAW[kind] + 1e-6
    assert np.array_equal(new[over], want_new[over])


@pytest.mark.parametrize("kind", KINDS)
def test_intermediates(models, vectors, kind):
    rows = vectors["inter_rows"]
    xn, dxn = torch.from_numpy(vectors["xn"][rows]), torch.from_numpy(vectors["dxn"][rows])
    m, got = models[kind], {}
    for tag, branch, inp in (("A", m.branch_x, xn), ("B", m.branch_dx, dxn)):
        h = branch.lift(inp)
        z = torch.relu(branch.compress(h))
        rate, gain, add = branch.rate(z), branch.gain(z), branch.additive(z)
        e = torch.exp(rate * h)
        t = add + gain * e
        got.update({f"{tag}_lift": h, f"{tag}_compress_relu": z, f"{tag}_rate": rate, f"{tag}_gain": gain,
                    f"{tag}_additive": add, f"{tag}_rate_times_h": rate * h, f"{tag}_exp": e,
                    f"{tag}_gain_times_exp": gain * e, f"{tag}_t": t, f"{tag}_project": branch.project(t),
                    f"{tag}_out": branch(inp)})
    got["cat"] = torch.cat([got["A_out"], got["B_out"]], 1)
    got["head_tanh"] = torch.tanh(m.head(got["cat"]))
    keys = {k.split("__", 1)[1] for k in vectors if k.startswith(f"inter_{kind}__")}
    assert keys == set(got)
    for role, value in got.items():
        ref = vectors[f"inter_{kind}__{role}"]
        assert (np.abs(value.numpy() - ref) <= 1e-5 * (1 + np.abs(ref))).all(), f"{kind} {role}"


# ------------------------------------------------------------------------------------------------ application rule
def test_normalisation_is_bit_exact(vectors):
    norm = normalise_history(torch.from_numpy(vectors["x"]).T)
    dxn = norm.xn[1:] - norm.xn[:-1]
    assert np.array_equal(norm.xn.T.numpy(), vectors["xn_f64"]) and np.array_equal(dxn.T.numpy(), vectors["dxn_f64"])
    assert np.array_equal(norm.shift.numpy(), vectors["norm_shift"])
    assert np.array_equal(norm.range.numpy(), vectors["norm_range"])
    assert np.array_equal(norm.xn.T.float().numpy(), vectors["xn"]) and np.array_equal(dxn.T.float().numpy(),
                                                                                      vectors["dxn"])


@pytest.mark.parametrize("kind", KINDS)
def test_denormalisation_is_bit_exact(vectors, applied, kind):
    """With Keras's own y, the rule reproduces the official helpers bit for bit (bias: the raw-w4 oddity)."""
    x = torch.from_numpy(vectors["x"])
    y = torch.from_numpy(vectors[f"y_{kind}"][:, 0])
    new = denormalise(x[:, 4], y, normalise_history(x.T), raw_newest=kind == "bias")
    assert np.array_equal(new.numpy(), applied[f"new_{kind}"])


@pytest.mark.parametrize("kind", KINDS)
def test_apply_rows(applied, vectors, kind, env):
    """The whole path (official bias rule) vs the official helper on 4096 rows, README bound per row."""
    x = torch.from_numpy(applied["x"])
    got = WNNPredictor(bias_rule="official").step_rows(list(x.T), kind, "w").numpy()
    assert got.dtype == np.float32 and np.isfinite(got).all()
    ref, group_a = applied[f"new_{kind}"], applied["group"] == 0
    bound = ATOL_Y[kind] * 2 * (vectors["norm_range"] + 1e-5) + 1e-6 * np.abs(ref) + 1e-7
    err = np.abs(got - ref)
    assert (err <= bound).all(), f"{kind}: worst err/bound {(err / bound).max():.3f}"
    assert err[group_a].max() <= 5e-7
    assert np.abs(got - applied[f"new32_{kind}"]).max() <= {"conv": 1e-5, "fc": 5e-5, "bias": 1e-5}[kind]


def test_apply_tensors_through_predict(applied, env, monkeypatch):
    """Keras-layout histories -> a trajectory -> predict(): the official helpers and the official callback."""
    cases = {"conv": "conv", "fc": "fc", "bias": "bias", "convbias": "bias"}  # tensor -> parameter kind
    params = {n: torch.from_numpy(applied[f"{n}_hist"]).movedim(-1, 0).contiguous() for n in cases}
    traj = Trajectory(params, dict(cases))
    official = WNNPredictor(bias_rule="official")
    out = predict(traj, official, steps=1)[0]
    for n in cases:
        assert np.abs(out[n].numpy() - applied[f"{n}_new"]).max() <= 5e-7, n
        assert np.abs(out[n].numpy() - applied[f"{n}_new32_callback"]).max() <= 5e-7, n
    # chunking never changes a value (rows are independent): predict()'s chunks and our CPU sub-chunks
    again = predict(traj, WNNPredictor(bias_rule="official", backend="torch"), steps=1, chunk_rows=7)[0]
    assert all(np.abs(again[n].numpy() - out[n].numpy()).max() <= 2e-7 for n in cases)
    monkeypatch.setattr(wnn, "CPU_CHUNK", 5)
    assert all(torch.equal(WNNPredictor(bias_rule="official").step(params[n], cases[n], n), out[n]) for n in cases)


def test_bias_rule_differs_only_on_bias(applied, vectors, env):
    """Default ("corrected") vs "official": same kernels; biases differ by w0 − w4 + 2(R + 1e-5)·w4 (README gaps)."""
    rows = list(torch.from_numpy(applied["x"]).T)
    fixed, official = WNNPredictor(), WNNPredictor(bias_rule="official")
    for kind in ("conv", "fc"):
        assert torch.equal(fixed.step_rows(rows, kind, "w"), official.step_rows(rows, kind, "w"))
    a, b = fixed.step_rows(rows, "bias", "w").double().numpy(), official.step_rows(rows, "bias", "w").double().numpy()
    x = applied["x"].astype(np.float64)
    gap = x[:, 0] - x[:, 4] + 2 * (vectors["norm_range"] + 1e-5) * x[:, 4]
    assert np.abs((b - a) - gap).max() <= 1e-6 * (1 + np.abs(b).max())
    group = applied["group"]
    for g, top in enumerate((0.040, 0.31, 9.5)):  # README: the gap is up to 0.040 (a), 0.31 (b), 9.5 (c)
        assert np.abs(b - a)[group == g].max() == pytest.approx(top, rel=0.02)
    # the corrected rule is the kernel helper: Θ0 plus a step of at most 2(R + 1e-5)
    assert (np.abs(a - x[:, 4]) <= 2 * (vectors["norm_range"] + 1e-5) * (1 + 1e-6) + 1e-7).all()


# ------------------------------------------------------------------------------------------------ predictor
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)


def drift_trajectory(model, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    states, cur = [], {n: v.clone() for n, v in model.state_dict().items()}
    for _ in range(s):
        states.append({n: v.clone() for n, v in cur.items()})
        cur = {n: v + 0.001 + torch.randn(v.shape, generator=g) * 0.002 if v.is_floating_point() else v + 1
               for n, v in cur.items()}
    return Trajectory.from_sessions(states, model, {"rate": 0.5})


def test_predict_small_model(env):
    m = Small()
    t = drift_trajectory(m)
    outs = predict(t, method="wnn", steps=3)
    theta0 = t.theta(0)
    for out in outs:
        m.load_state_dict(out, strict=True)
        assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())
        assert torch.equal(out["bn.weight"], theta0["bn.weight"])  # norm="keep", as the callback skips BN
        assert torch.equal(out["bn.running_mean"], theta0["bn.running_mean"])
    for name in ("conv.weight", "conv.bias", "fc.weight", "fc.bias"):
        assert not torch.equal(outs[0][name], theta0[name]) and not torch.equal(outs[0][name], outs[1][name])
    # the window slides: step 2 is one step on (Θ3, Θ2, Θ1, Θ0, Θ(-1))
    p = create_predictor("wnn")
    w = t.params["fc.weight"]
    assert torch.equal(outs[1]["fc.weight"], p.step(torch.cat([w[1:], outs[0]["fc.weight"][None]]), "fc", "fc.weight"))
    # official bias rule: only the bias-routed tensors change
    off = predict(t, method="wnn", steps=1, bias_rule="official")[0]
    for name in ("conv.weight", "fc.weight"):
        assert torch.equal(off[name], outs[0][name])
    for name in ("conv.bias", "fc.bias"):
        assert not torch.equal(off[name], outs[0][name])


def test_registry_entry(env):
    p = create_predictor("wnn", bias_rule="official", known="ignored")
    assert p.describe() == {"method": "wnn", "bias_rule": "official", "normalise": True} and p.window == 5
    with pytest.raises(UnknownName, match="corrected, official"):
        create_predictor("wnn", bias_rule="nope")
    with pytest.raises(KnowError, match="bad options for method 'wnn'"):
        create_predictor("wnn", lam=2)
    # by name alone, through the registry of know.predict
    code = "from know.predict import create_predictor; p = create_predictor('wnn'); print(type(p).__module__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0 and res.stdout.strip() == "know.wnn", res.stderr
