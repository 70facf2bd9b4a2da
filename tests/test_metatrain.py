"""Meta-training KNOWN on small synthetic trajectories with a learnable drift."""
import csv
import json

import pytest
import torch

from know import metatrain
from know.errors import KnowError, TrajectoryError, UnknownName
from know.known import KNOWN
from know.config import MetaTrainCfg, override, parse_overrides
from know.metatrain import meta_train, windows_of
from know.trajectory import Trajectory

SHAPES = {"conv.weight": ((8, 4, 3, 3), "conv"), "fc.weight": ((32, 16), "fc"), "fc.bias": ((64,), "bias"),
          "bn.weight": ((8,), "norm")}
Q = 0.6  # each increment (towards more data) is Q times the previous one


def synthetic(seed: int, sessions: int = 7) -> Trajectory:
    """x_t = b + a (1 - Q^t), t = 0 oldest: a decaying drift, so the next step is Q * the last difference."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(sessions, dtype=torch.float32)
    params = {}
    for name, (shape, _) in SHAPES.items():
        b, a = 0.05 * torch.randn(shape, generator=g), 0.05 * torch.randn(shape, generator=g)
        params[name] = b + a * (1 - Q ** t).view(-1, *[1] * len(shape))  # (S, *shape)
    return Trajectory(params=params, kinds={n: k for n, (_, k) in SHAPES.items()}, meta={"name": f"syn{seed}"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches here are tiny: with 2 OpenMP threads the barriers cost more than the math (6x slower on a busy
    2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CFG = MetaTrainCfg(epochs=12, batch_size=256, seed=1, device="cpu", progress=False, val_fraction=0.25)


@pytest.fixture(scope="module")
def trajs():
    return [synthetic(s) for s in range(8)]


@pytest.fixture(scope="module")
def trained(trajs, tmp_path_factory):
    out = tmp_path_factory.mktemp("mt")
    return meta_train(trajs, CFG, out), out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_windows_of():
    stack = torch.arange(2 * 7, dtype=torch.float32).view(2, 7).T  # (S=7, P=2): scalar p holds 7p .. 7p+6
    rows = windows_of(stack, 5)
    assert rows.tolist() == [[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [8, 9, 10, 11, 12, 13]]
    assert windows_of(stack, 5, torch.tensor([3, 0])).tolist() == [rows[3].tolist(), rows[0].tolist()]


def test_beats_copy_last(trained):
    models, out = trained
    assert set(models) == {"conv", "fc", "bias"} and all(isinstance(m, KNOWN) for m in models.values())
    rows = _rows(out / "metrics.csv")
    assert list(rows[0]) == list(metatrain.CSV_FIELDS)
    assert len(rows) == CFG.epochs * 3
    summary = json.loads((out / "summary.json").read_text())
    for kind, best in summary.items():
        # linear extrapolation overshoots (1 vs Q), copy-last undershoots; KNOWN should learn Q
        assert best["val_mae_linear"] < best["val_mae_copy_last"]
        assert best["val_mae"] < 0.7 * best["val_mae_copy_last"], (kind, best)
        assert models[kind].meta["metrics"]["val_mae"] == best["val_mae"]
        assert models[kind].meta["training_data"]["num_val_trajectories"] == 2


def test_resume_equals_uninterrupted(trajs, trained, tmp_path):
    models, _ = trained
    cfg = MetaTrainCfg(**{**CFG.__dict__, "epochs": 5})
    meta_train(trajs, cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 5
    again = meta_train(trajs, CFG, tmp_path)  # resumes at epoch 5 and runs to 12
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows if r["kind"] == "fc"] == list(range(1, CFG.epochs + 1))
    for kind in models:
        for (n, a), b in zip(again[kind].state_dict().items(), models[kind].state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), (kind, n)


def test_resume_refuses_other_config(trajs, tmp_path):
    cfg = MetaTrainCfg(**{**CFG.__dict__, "epochs": 1, "kinds": ("bias",)})
    meta_train(trajs[:3], cfg, tmp_path)
    with pytest.raises(KnowError, match="lr"):
        meta_train(trajs[:3], MetaTrainCfg(**{**cfg.__dict__, "lr": 1e-2}), tmp_path)
    with pytest.raises(KnowError, match="other trajectories"):
        meta_train(trajs[:4], cfg, tmp_path)


def test_window_ablation_and_short_trajectories(tmp_path):
    cfg = MetaTrainCfg(window=3, epochs=1, batch_size=512, device="cpu", progress=False, kinds=("fc",))
    models = meta_train([synthetic(0, sessions=4), synthetic(1, sessions=3), synthetic(2, sessions=5)], cfg, tmp_path)
    assert models["fc"].window == 3
    assert models["fc"].meta["training_data"]["train_samples"] > 0
    with pytest.raises(TrajectoryError, match="window \\+ 1"):
        meta_train([synthetic(0, sessions=5)], MetaTrainCfg(epochs=1, device="cpu", progress=False), tmp_path / "b")


def test_subsampling_is_seeded(trajs):
    cfg = MetaTrainCfg(max_samples_per_kind=300, kinds=("fc",))
    a, _ = metatrain.gather_samples(trajs, cfg, metatrain.DEFAULT_ROUTE, cfg.max_samples_per_kind, "train")
    b, _ = metatrain.gather_samples(trajs, cfg, metatrain.DEFAULT_ROUTE, cfg.max_samples_per_kind, "train")
    assert 250 <= a["fc"].shape[0] <= 300 and torch.equal(a["fc"], b["fc"])


def test_overrides():
    cfg = override(MetaTrainCfg(), parse_overrides(["--epochs=3", "--lr=0.01", "--kinds=conv,fc", "--progress=false"]))
    assert (cfg.epochs, cfg.lr, cfg.kinds, cfg.progress) == (3, 0.01, ("conv", "fc"), False)
    with pytest.raises(UnknownName, match="--batch_size"):
        override(MetaTrainCfg(), parse_overrides(["--epoch=3"]))
    with pytest.raises(KnowError, match="expected int"):
        override(MetaTrainCfg(), parse_overrides(["--epochs=three"]))


def test_cli(trajs, tmp_path, capsys):
    for i, t in enumerate(trajs[:3]):
        t.save(tmp_path / "traj" / f"t{i}.safetensors")
    out = tmp_path / "run"
    rc = metatrain.main(["--trajectories", str(tmp_path / "traj"), "--out", str(out), "--epochs=1",
                         "--kinds=bias", "--progress=0", "--device=cpu"])
    assert rc == 0 and (out / "known_bias.safetensors").is_file() and (out / "config.json").is_file()
    assert "bias: val_mae" in capsys.readouterr().out
    from know.cli import main as cli_main
    assert cli_main(["meta-train", "--trajectories", str(tmp_path / "nothing*"), "--out", str(out)]) == 2


def test_routing_follows_prediction(trajs):
    t = trajs[0]
    extra = Trajectory(params={**t.params, "pos_embed": torch.zeros(7, 4, 5)},
                       kinds={**t.kinds, "pos_embed": "other"}, meta={})
    cfg = MetaTrainCfg(kinds=("fc",))
    gen = torch.Generator().manual_seed(0)
    official = metatrain.trajectory_samples(extra, cfg, metatrain.prediction_route("official"), 10**6, gen)
    plain = metatrain.trajectory_samples(extra, cfg, metatrain.DEFAULT_ROUTE, 10**6, gen)
    assert official["fc"].shape[0] == plain["fc"].shape[0] + 20 * 2  # 2-D "other" weights go to FC, 2 windows
    with pytest.raises(UnknownName, match="official"):
        meta_train(trajs, MetaTrainCfg(routing="nope", device="cpu"), "/nonexistent-never-created")
