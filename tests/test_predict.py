"""KNOW prediction: FastKNOWN vs KNOWN, official helper recurrences, routing / norm policies, timm models, CLI."""

import numpy as np
import pytest
import torch
from torch import nn

from know.errors import TrajectoryError, UnknownName
from know.fastknown import FastKNOWN, load_kernel
from know.predict import PREDICTORS, KnownPredictor, create_predictor, main, predict, register_predictor
from know.routes import route
from know.trajectory import Trajectory



@pytest.fixture
def weights_dir(known_weights):
    return known_weights


@pytest.fixture
def predictor(known_weights):
    return KnownPredictor("official")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 7)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3)
        self.short = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        self.pos_embed = nn.Parameter(torch.randn(1, 2, 4) * 0.02)
        self.gamma = nn.Parameter(torch.ones(4))


def drift_trajectory(model, s=5, seed=0):
    """Group-(a)-like drift of every float tensor; buffers change too (Θ0's must be kept)."""
    g = torch.Generator().manual_seed(seed)
    base = model.state_dict()
    mu = {n: torch.randn(v.shape, generator=g) * 0.002 for n, v in base.items() if v.is_floating_point()}
    states, cur = [], {n: v.clone() for n, v in base.items()}
    for _ in range(s):
        states.append({n: v.clone() for n, v in cur.items()})
        cur = {n: v + mu[n] + torch.randn(v.shape, generator=g) * 0.002 if n in mu else v + 1
               for n, v in cur.items()}
    return Trajectory.from_sessions(states, model, {"rate": 0.5})


# ------------------------------------------------------------------------------------------------ FastKNOWN
def backends():
    return ["torch"] + (["c"] if load_kernel() is not None else [])


@pytest.mark.parametrize("kind", ["conv", "fc", "bias"])
def test_fast_known_matches_known(kind, weights_dir):
    from know.known import load_official
    v = np.load(weights_dir / "known_vectors.npz")
    x, dx = torch.from_numpy(v["x"]), torch.from_numpy(v["dx"])
    model = load_official(kind)
    ref = model(x, dx)
    for backend in backends():
        y = FastKNOWN(model, backend=backend)(x)
        assert (y - ref).abs().max() <= 2e-6, backend
        assert (y - torch.from_numpy(v[f"y_{kind}"])).abs().max() <= 2e-6, backend


@pytest.mark.parametrize("kind", ["conv", "fc", "bias"])
def test_known_reproduces_official_helpers(kind, weights_dir, predictor):
    """predict() over a trajectory of the helper tensors = get_*Layer_pred recurrence (3 steps)."""
    h = np.load(weights_dir / "known_helpers.npz")
    init = torch.from_numpy(h[f"{kind}_init"]).movedim(-1, 0)  # (5, *shape), oldest first
    traj = Trajectory({"w": init.contiguous()}, {"w": kind})
    outs = predict(traj, predictor, steps=3)
    for s in range(3):
        assert (outs[s]["w"] - torch.from_numpy(h[f"{kind}_preds"][s])).abs().max() <= 1e-6
    # small chunks and the torch path agree with the kernel
    again = predict(traj, KnownPredictor("official", backend="torch"), steps=3, chunk_rows=7)
    for a, b in zip(outs, again):
        assert (a["w"] - b["w"]).abs().max() <= 2e-6


# ------------------------------------------------------------------------------------------------ routing
def test_route_table():
    cases = [  # kind, shape, official, 3x3
        ("conv", (8, 4, 3, 3), "conv", "conv"), ("conv", (8, 4, 7, 7), "conv", "fc"),
        ("conv", (8, 4, 1, 1), "conv", "fc"), ("conv", (3, 3, 40), "conv", "conv"),
        ("fc", (10, 8), "fc", "fc"), ("bias", (8,), "bias", "bias"),
        ("other", (1, 5, 8), "fc", "fc"), ("other", (8,), None, None), ("norm", (8,), None, None),
    ]
    for kind, shape, off, k3 in cases:
        assert route(kind, shape, "official") == off, (kind, shape)
        assert route(kind, shape, "3x3") == k3, (kind, shape)
    assert route("norm", (8,), "official", norm="bias") == "bias"
    with pytest.raises(UnknownName, match="official"):
        route("conv", (1, 1, 3, 3), "nope")


def test_routing_policies_pick_models(predictor):
    m = Small()
    t = drift_trajectory(m)
    off = predict(t, predictor, steps=1, routing="official")[0]
    k3 = predict(t, predictor, steps=1, routing="3x3")[0]
    for name in ("stem.weight", "conv.weight", "short.weight", "fc.weight", "pos_embed", "fc.bias"):
        window = t.params[name]
        want_off = predictor.step(window, route(t.kinds[name], window.shape[1:], "official"), name)
        want_3x3 = predictor.step(window, route(t.kinds[name], window.shape[1:], "3x3"), name)
        assert torch.equal(off[name], want_off) and torch.equal(k3[name], want_3x3), name
    assert not torch.equal(off["stem.weight"], k3["stem.weight"])  # 7x7: Conv model vs FC model
    assert torch.equal(off["conv.weight"], k3["conv.weight"])
    assert torch.equal(off["gamma"], t.params["gamma"][-1])  # 1-D "other": kept


def test_norm_keep_vs_bias(predictor):
    m = Small()
    t = drift_trajectory(m)
    keep = predict(t, predictor, steps=2, norm="keep")
    bias = predict(t, predictor, steps=2, norm="bias")
    theta0 = t.theta(0)
    for out in keep:
        assert torch.equal(out["bn.weight"], theta0["bn.weight"]) and torch.equal(out["bn.bias"], theta0["bn.bias"])
    assert not torch.equal(bias[0]["bn.weight"], theta0["bn.weight"])
    assert torch.equal(bias[0]["bn.weight"], predictor.step(t.params["bn.weight"], "bias", "bn.weight"))
    for out in keep + bias:  # buffers are always Θ0's
        assert torch.equal(out["bn.running_mean"], theta0["bn.running_mean"])
        assert out["bn.num_batches_tracked"] == theta0["bn.num_batches_tracked"]


@pytest.mark.parametrize("method", ["known", "naive", "taskvector", "logfit", "tsv"])
def test_predict_loads_into_small_model(method, predictor):
    m = Small()
    t = drift_trajectory(m)
    outs = predict(t, predictor if method == "known" else method, steps=3)
    assert len(outs) == 3
    for out in outs:
        m.load_state_dict(out, strict=True)
        assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())
    if method == "naive":
        assert all(torch.equal(outs[2][n], v) for n, v in t.theta(0).items())
    else:
        assert not torch.equal(outs[0]["conv.weight"], t.theta(0)["conv.weight"])
        assert not torch.equal(outs[0]["conv.weight"], outs[1]["conv.weight"])  # the window slides


def timm_models():
    import timm
    return {
        "test_resnet": lambda: timm.create_model("test_resnet", num_classes=10),
        "vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, depth=2,
                                              embed_dim=32, num_heads=2),
        "pvt_v2_b0": lambda: timm.create_model("pvt_v2_b0", num_classes=10, embed_dims=(8, 16, 24, 32),
                                               depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        "test_convnext": lambda: timm.create_model("test_convnext", num_classes=10),
    }


@pytest.mark.parametrize("name", ["test_resnet", "vit_tiny", "pvt_v2_b0", "test_convnext"])
def test_predict_timm_models(name, predictor):
    m = timm_models()[name]()
    t = drift_trajectory(m)
    for routing in ("official", "3x3"):
        outs = predict(t, predictor, steps=3, routing=routing)
        for out in outs:
            m.load_state_dict(out, strict=True)
    if "pos_embed" in t.params:  # ≥2-D "other" goes to the FC model
        assert not torch.equal(outs[0]["pos_embed"], t.params["pos_embed"][-1])
    m.eval()(torch.randn(1, 3, 32, 32) if name != "test_resnet" else torch.randn(1, 3, 64, 64))


# ------------------------------------------------------------------------------------------------ API edges
def test_registry_and_errors(predictor):
    assert {"known", "naive", "taskvector", "logfit", "tsv"} <= set(PREDICTORS)
    with pytest.raises(UnknownName, match="taskvector"):
        create_predictor("nope")
    t = drift_trajectory(Small(), s=3)
    with pytest.raises(TrajectoryError, match="reads 5 sessions"):
        predict(t, predictor)
    assert len(predict(t, "taskvector", steps=2)) == 2  # a 2-point method runs on 3 sessions
    long = drift_trajectory(Small(), s=7)
    tail = long.tail(5)
    a, b = predict(long, predictor, steps=1)[0], predict(tail, predictor, steps=1)[0]
    assert all(torch.equal(a[n], b[n]) for n in a)

    class Twice(KnownPredictor.__mro__[1]):  # any Predictor subclass registers
        name, window = "twice", 1

        def step_rows(self, rows, kind, name):
            return rows[-1] * 2

    register_predictor("twice", Twice)
    try:
        out = predict(t, "twice", steps=1)[0]
        assert torch.equal(out["fc.weight"], 2 * t.theta(0)["fc.weight"])
    finally:
        PREDICTORS.pop("twice")


def test_known_from_our_weights(tmp_path, predictor):
    from know.known import load_official, save_known
    path = save_known({k: load_official(k) for k in ("conv", "fc", "bias")}, tmp_path / "k.safetensors",
                      {"note": "copy of the official weights"})
    t = drift_trajectory(Small())
    a = predict(t, "known", known=str(path), steps=2)
    b = predict(t, predictor, steps=2)
    for x, y in zip(a, b):
        assert all(torch.equal(x[n], y[n]) for n in x)


def test_cli(tmp_path):
    from safetensors.torch import load_file
    m = Small()
    t = drift_trajectory(m)
    t.save(tmp_path / "t.safetensors")
    rc = main(["--trajectory", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "pred"),
               "--steps", "2", "--method", "taskvector", "--opt", "lam=2"])
    assert rc == 0
    for s in (1, 2):
        m.load_state_dict(load_file(str(tmp_path / "pred" / f"step{s}.safetensors")), strict=True)
    from safetensors import safe_open
    import json
    with safe_open(str(tmp_path / "pred" / "step2.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["know"])
    assert meta["method"] == "taskvector" and meta["lam"] == 2 and meta["factor"] == 4.0
    d1 = t.theta(0)["fc.weight"] - t.theta(1)["fc.weight"]
    assert torch.allclose(load_file(str(tmp_path / "pred" / "step2.safetensors"))["fc.weight"],
                          t.theta(0)["fc.weight"] + 6 * d1, atol=1e-6)  # λ + λ² = 6
