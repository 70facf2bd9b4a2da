"""Trajectories: stacking order, safetensors round trip, validation errors, official .mat import/export."""
import json
import math

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from know.errors import TrajectoryError
from know.trajectory import (Trajectory, load_official_mat, official_layout, param_kinds, parse_official_name,
                             save_official_mat)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.stem = nn.Conv2d(3, 2, 7)
        self.fc = nn.Linear(4, 5)
        self.ln = nn.LayerNorm(5)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 5))
        self.gamma = nn.Parameter(torch.ones(5))


def sessions(model, s=5):
    """states[k] = Θk: every float tensor offset by k, so the stacking order is visible."""
    base = model.state_dict()
    return [{n: v + k if v.is_floating_point() else v.clone() for n, v in base.items()} for k in range(s)]


def test_param_kinds():
    kinds = param_kinds(Tiny())
    assert kinds == {"conv.weight": "conv", "conv.bias": "bias", "bn.weight": "norm", "bn.bias": "norm",
                     "stem.weight": "conv", "stem.bias": "bias", "fc.weight": "fc", "fc.bias": "bias",
                     "ln.weight": "norm", "ln.bias": "norm", "pos_embed": "other", "gamma": "other"}


def test_from_sessions_order_and_theta():
    m = Tiny()
    states = sessions(m)
    t = Trajectory.from_sessions(states, m, {"rate": 0.5})
    assert t.num_sessions == 5
    w = t.params["conv.weight"]
    # oldest / most-forgotten (Θ4) first, Θ0 last
    assert torch.allclose(w[:, 0, 0, 0, 0] - w[-1, 0, 0, 0, 0], torch.tensor([4.0, 3, 2, 1, 0]))
    for k in range(5):
        th = t.theta(k)
        assert torch.equal(th["fc.weight"], states[k]["fc.weight"])
        assert torch.equal(th["bn.running_mean"], states[0]["bn.running_mean"])  # buffers: Θ0's
    assert set(t.buffers) == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert t.meta["rate"] == 0.5 and "code_version" in t.meta and t.meta["architecture"] == "Tiny"
    m.load_state_dict(t.theta(0), strict=True)
    assert t.tail(2).num_sessions == 2 and torch.equal(t.tail(2).params["gamma"][-1], t.params["gamma"][-1])


def test_save_load_round_trip(tmp_path):
    m = Tiny()
    t = Trajectory.from_sessions(sessions(m), m, {"dataset": "cifar100", "session_sizes": [50000, 25000]})
    path = t.save(tmp_path / "sub" / "t.safetensors")
    assert not [p for p in path.parent.iterdir() if p.name != "t.safetensors"]  # no temp file left
    u = Trajectory.load(path)
    assert list(u.params) == list(t.params) and u.kinds == t.kinds and u.meta == t.meta
    for n in t.params:
        assert torch.equal(u.params[n], t.params[n])
    for n in t.buffers:
        assert torch.equal(u.buffers[n], t.buffers[n]) and u.buffers[n].dtype == t.buffers[n].dtype
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
        assert md["format"] == "know.trajectory" and json.loads(md["shapes"])["fc.weight"] == [5, 4]
        assert "param/conv.weight" in f.keys() and "buffer/bn.running_var" in f.keys()


def test_nan_names_parameter_and_session():
    m = Tiny()
    states = sessions(m)
    states[2]["fc.weight"][0, 0] = float("nan")
    with pytest.raises(TrajectoryError, match=r"fc\.weight.*Θ2"):
        Trajectory.from_sessions(states, m)
    t = Trajectory.from_sessions(sessions(m), m)
    t.params["fc.bias"][1, 0] = float("inf")  # index 1 of 5 = Θ3
    with pytest.raises(TrajectoryError, match=r"fc\.bias.*Θ3"):
        t.validate()


def test_mismatched_sessions():
    m = Tiny()
    states = sessions(m)
    states[1]["fc.weight"] = torch.zeros(6, 4)
    with pytest.raises(TrajectoryError, match=r"fc\.weight.*shape"):
        Trajectory.from_sessions(states, m)
    states = sessions(m)
    del states[3]["gamma"]
    with pytest.raises(TrajectoryError, match="different tensor names"):
        Trajectory.from_sessions(states, m)
    with pytest.raises(TrajectoryError, match="at least 2"):
        Trajectory.from_sessions(states[:1], m)


def test_truncated_and_foreign_files(tmp_path):
    m = Tiny()
    path = Trajectory.from_sessions(sessions(m), m).save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(TrajectoryError, match="truncated|corrupt"):
            Trajectory.load(bad)
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(TrajectoryError, match="not a know trajectory"):
        Trajectory.load(tmp_path / "other.safetensors")
    with pytest.raises(TrajectoryError, match="not found"):
        Trajectory.load(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------------ official .mat
NAME = "ViT_Small_CIFAR10_Trial_2_SamplingRate_0.3441_LR_0.000898_BS_33.mat"


def write_official(path, matlab_order: bool, n=6, m=11, k=4, s=7):
    """Session i holds value 100*i + position, so the order is checkable. Returns the (S, ...) arrays."""
    conv = np.stack([100 * i + np.arange(9 * n).reshape(3, 3, n) for i in range(s)]).astype(np.float32)
    fc = np.stack([100 * i + np.arange(m) for i in range(s)]).astype(np.float32)
    bias = np.stack([100 * i + np.arange(k) for i in range(s)]).astype(np.float32)
    with h5py.File(path, "w") as f:
        if matlab_order:  # MATLAB (3,3,N,S) column-major, as h5py sees it: (S, N, 3, 3)
            f["ConvWeights"] = conv.transpose(0, 3, 2, 1)
            f["FCWeights"], f["Bias"] = fc, bias
        else:  # the MATLAB shape stored as is: (3, 3, N, S)
            f["ConvWeights"] = np.moveaxis(conv, 0, -1)
            f["FCWeights"], f["Bias"] = fc.T, bias.T
    return conv, fc, bias


@pytest.mark.parametrize("matlab_order", [True, False])
def test_official_mat_import(tmp_path, matlab_order):
    conv, fc, bias = write_official(tmp_path / NAME, matlab_order)
    t = load_official_mat(tmp_path / NAME)
    assert t.num_sessions == 7 and t.kinds == {"conv": "conv", "fc": "fc", "bias": "bias"}
    assert t.params["conv"].shape == (7, 3, 3, 6)
    np.testing.assert_array_equal(t.params["conv"].numpy(), conv)  # index 0 = smallest dataset, 6 = full data
    np.testing.assert_array_equal(t.params["fc"].numpy(), fc)
    np.testing.assert_array_equal(t.params["bias"].numpy(), bias)
    assert t.meta["architecture"] == "ViT_Small" and t.meta["dataset"] == "CIFAR10"
    assert math.isclose(t.meta["rate"], 0.3441) and math.isclose(t.meta["lr"], 0.000898)
    assert t.meta["batch_size"] == 33


def test_official_mat_seven_wide_fc(tmp_path):
    """An FC block of exactly 7 weights is ambiguous in shape; MATLAB files put the session axis first in h5py."""
    write_official(tmp_path / NAME, True, m=7)
    t = load_official_mat(tmp_path / NAME)
    assert t.params["fc"][6, 0] == 600 and t.params["fc"][0, 6] == 6


@pytest.mark.parametrize("matlab_order", [True, False])
def test_official_mat_export_round_trip(tmp_path, matlab_order):
    write_official(tmp_path / NAME, True)
    t = load_official_mat(tmp_path / NAME)
    out = save_official_mat(t, tmp_path / "out" / NAME, matlab_order=matlab_order)
    assert out.read_bytes()[:10] == b"MATLAB 7.3"
    u = load_official_mat(out)
    for k in t.params:
        assert torch.equal(u.params[k], t.params[k])
    assert u.meta["rate"] == t.meta["rate"]


def test_official_layout_of_a_model_trajectory(tmp_path):
    m = Tiny()
    t = Trajectory.from_sessions(sessions(m), m)
    lay = official_layout(t)
    assert lay["conv"].shape == (5, 3, 3, 3 * 4)  # only the 3x3 kernel, Keras (kh, kw, cin*cout) order
    w = t.params["conv.weight"]  # (S, cout, cin, 3, 3)
    assert torch.equal(lay["conv"][:, 1, 2, 0], w[:, 0, 0, 1, 2])
    assert lay["fc"].shape == (5, 2 * 3 * 49 + 20 + 15)  # 7x7 stem, Linear, pos_embed
    assert lay["bias"].shape == (5, 4 + 2 + 5)
    save_official_mat(t, tmp_path / "m.mat")
    assert load_official_mat(tmp_path / "m.mat", num_sessions=5).params["conv"].shape == (5, 3, 3, 12)


def test_parse_official_name():
    meta = parse_official_name("/x/ResNet_MNIST_SamplingRate_5e-01_LR_1.2e-3_BS_128.mat")
    assert meta["architecture"] == "ResNet" and meta["dataset"] == "MNIST"
    assert meta["rate"] == 0.5 and meta["lr"] == 1.2e-3 and meta["batch_size"] == 128
    assert "rate" not in parse_official_name("whatever.mat")


def test_bad_mat(tmp_path):
    (tmp_path / "x.mat").write_bytes(b"not hdf5")
    with pytest.raises(TrajectoryError, match="not a readable"):
        load_official_mat(tmp_path / "x.mat")
