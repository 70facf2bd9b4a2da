"""Forgetting trajectories, resuming, the collector and stacked training (CPU seconds, debug data)."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import know.forgetting as fg
from know.errors import UnknownName
from know.config import CollectCfg, ForgetCfg
from know.forgetting import collect, forget, forget_stacked, pretrain, pretrain_and_forget
from know.config import ConfigError, override
from know.stack import Stack
from know.train import cpu_state, seed_from
from know.trajectory import Trajectory

TINY = ForgetCfg(model="debugnet", dataset="debug", sessions=4, rate=0.5, batch_size=16, lr=1e-2, device="cpu",
                 max_images=64)


@pytest.fixture(scope="module")
def sequential():
    theta0 = pretrain(TINY, progress=False)
    return theta0, forget(TINY, theta0, progress=False)


def test_sequential_trajectory_layout(sequential):
    theta0, traj = sequential
    assert traj.num_sessions == 4
    assert traj.meta["session_sizes"] == [round(64 * 0.5 ** k) for k in range(4)] == [64, 32, 16, 8]
    for name, stack in traj.params.items():
        assert torch.equal(stack[-1], theta0[name].float())  # Θ0 last
        for a, b in zip(stack[:-1], stack[1:]):
            assert not torch.equal(a, b), f"{name}: consecutive sessions are identical"
    assert set(traj.buffers) == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    meta = traj.meta
    for key in ("architecture", "model_kwargs", "dataset", "rate", "session_sizes", "lr", "batch_size",
                "epochs_per_session", "seed", "code_version", "restart_from_initial"):
        assert key in meta
    assert meta["architecture"] == "debugnet" and meta["restart_from_initial"] is False
    assert len(meta["test_metric"]) == len(meta["dist_to_theta0"]) == 4
    assert meta["dist_to_theta0"][0] == 0 and all(d > 0 for d in meta["dist_to_theta0"][1:])


def test_nested_subsets_share_prefix_across_fractions():
    full = fg.session_subsets(replace(TINY, max_images=None), 256)
    half = fg.session_subsets(replace(TINY, max_images=None, data_fraction=0.5), 256)
    assert torch.equal(full[1], half[0]) and torch.equal(full[2], half[1])


def test_restart_from_initial_differs_from_sequential(sequential):
    theta0, seq = sequential
    restart = forget(replace(TINY, restart_from_initial=True), theta0, progress=False)
    assert restart.meta["restart_from_initial"] is True
    w = "conv.weight"
    assert torch.equal(restart.params[w][-1], seq.params[w][-1])  # same Θ0
    assert not torch.allclose(restart.params[w][:-1], seq.params[w][:-1])
    # every restarted session starts from the same init, so it ends near it, far from Θ0's neighbourhood
    init = cpu_state(fg.build_model(TINY, fg.load_data(TINY)[0]))[w]
    assert (restart.theta(1)[w] - init).norm() < (seq.theta(1)[w] - init).norm()


class Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, n_calls):
    real, calls = fg.train_epoch, {"n": 0}

    def flaky(*args, **kwargs):
        if calls["n"] == n_calls:
            raise Interrupt
        calls["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(fg, "train_epoch", flaky)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = replace(TINY, sessions=3, pretrain_epochs=2, epochs_per_session=2)
    reference = pretrain_and_forget(cfg, progress=False)
    _interrupt_after(monkeypatch, 1)  # during pre-training (after its first epoch)
    with pytest.raises(Interrupt):
        pretrain(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    theta0 = pretrain(cfg, tmp_path, progress=False)
    _interrupt_after(monkeypatch, 3)  # session 1 done (2 epochs), session 2 after its first epoch
    with pytest.raises(Interrupt):
        forget(cfg, theta0, tmp_path, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "session1.pt").is_file() and (tmp_path / "session_partial.pt").is_file()
    resumed = forget(cfg, theta0, tmp_path, progress=False)
    for name in reference.params:
        assert torch.equal(reference.params[name], resumed.params[name]), name
    assert reference.meta["test_metric"] == resumed.meta["test_metric"]


def test_resume_refuses_other_config(tmp_path):
    cfg = replace(TINY, sessions=2)
    theta0 = pretrain(cfg, tmp_path, progress=False)
    with pytest.raises(Exception, match="different config"):
        pretrain(replace(cfg, lr=0.5), tmp_path, progress=False)
    forget(cfg, theta0, tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------- stacked training
STACK = ForgetCfg(model="simplenet", dataset="debug", sessions=3, batch_size=16, lr=1e-4, device="cpu", max_images=48)


@pytest.mark.parametrize("backend,restart", [("lanes", False), ("wide", False), ("vmap", False), ("wide", True)])
def test_stacked_equals_one_at_a_time(backend, restart):
    """The key correctness check: K members trained as one equal K runs trained alone (same seeds and batches).
    Small learning rates: Adam normalises near-zero gradients, which amplifies float rounding at large lr."""
    cfgs = [replace(STACK, seed=s, lr=lr, restart_from_initial=restart) for s, lr in ((1, 1e-4), (2, 3e-4))]
    stacked = forget_stacked(cfgs, progress=False, backend=backend)
    for cfg, traj in zip(cfgs, stacked):
        alone = pretrain_and_forget(cfg, progress=False)
        for name in alone.params:
            torch.testing.assert_close(traj.params[name], alone.params[name], rtol=0, atol=1e-5)
        assert traj.meta["session_sizes"] == alone.meta["session_sizes"]
        assert traj.meta["lr"] == cfg.lr and traj.meta["seed"] == cfg.seed
    assert not torch.allclose(stacked[0].params["head.weight"], stacked[1].params["head.weight"])


class ChannelMixer(nn.Module):
    """A forward that mixes channels outside Conv/Linear (mean over channels): the wide backend cannot run it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv(x).mean(1), 4).flatten(1))


def test_stack_falls_back_to_vmap_and_matches_autograd():
    models = [ChannelMixer() for _ in range(3)]
    x, y = torch.randn(3, 5, 1, 8, 8), torch.randint(0, 2, (3, 5))
    stack = Stack(models[0], [m.state_dict() for m in models], x[0])
    assert stack.backend == "vmap"
    loss, grads = stack.loss_and_grads(x, y)
    for m, model in enumerate(models):
        ref = F.cross_entropy(model(x[m]), y[m])
        ref.backward()
        torch.testing.assert_close(loss[m], ref.detach())
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][m], p.grad)


def test_wide_stack_matches_autograd():
    from know.models import create_model
    models = [create_model("simplenet", num_classes=3, in_chans=1) for _ in range(2)]
    x, y = torch.randn(2, 4, 1, 32, 32), torch.randint(0, 3, (2, 4))
    stack = Stack(models[0], [m.state_dict() for m in models], x[0], backend="wide")
    assert stack.backend == "wide"
    loss, grads = stack.loss_and_grads(x, y)
    for m, model in enumerate(models):
        F.cross_entropy(model(x[m]), y[m]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][m], p.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the collector
COLLECT = CollectCfg(models=["simplenet"], datasets=["debug"], trials=3, group_size=2, sessions=3, max_images=64,
                     batch_min=16, eval_images=32, device="cpu", augment=False)


def test_collector_samples_in_range_and_resumes(tmp_path):
    paths = collect(COLLECT, tmp_path, progress=False)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    trajs = [Trajectory.load(p) for p in paths]
    for p, t in zip(paths, trajs):
        m = t.meta
        assert t.num_sessions == 3
        assert 0.3 <= m["rate"] <= 0.9 and 1e-5 <= m["lr"] <= 4e-3
        hi = max(16, 64 * m["rate"] ** 2)
        assert 16 <= m["batch_size"] <= hi
        assert f"_SamplingRate_{m['rate']:.6f}_" in p.name and f"_BS_{m['batch_size']}." in p.name
        assert m["session_sizes"] == [round(64 * m["rate"] ** k) for k in range(3)]
    # a group shares rate and batch size, its trials differ in lr and seed
    assert trajs[0].meta["rate"] == trajs[1].meta["rate"] != trajs[2].meta["rate"]
    assert trajs[0].meta["lr"] != trajs[1].meta["lr"] and trajs[0].meta["seed"] != trajs[1].meta["seed"]
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert collect(COLLECT, tmp_path, progress=False) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # finished trials are skipped


def test_collect_one_matches_its_group_member(tmp_path):
    cfg = replace(COLLECT, trials=2, lr_min=1e-5, lr_max=2e-4)
    [stacked_path, _] = fg.collect_group(cfg, 0, tmp_path / "g", progress=False)
    alone_path = fg.collect_one(cfg, 0, tmp_path / "one", progress=False)
    assert stacked_path.name == alone_path.name
    a, b = Trajectory.load(stacked_path), Trajectory.load(alone_path)
    for name in a.params:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- CLI and config
def test_forget_cli(tmp_path, capsys):
    out = tmp_path / "traj.safetensors"
    assert fg.main(["--out", str(out), "--model=debugnet", "--dataset", "debug", "--sessions=2",
                    "--batch-size=64", "--device=cpu"]) == 0
    assert Trajectory.load(out).num_sessions == 2 and "wrote" in capsys.readouterr().out
    with pytest.raises(UnknownName, match="--epochs_per_session"):
        fg.main(["--out", str(out), "--epochs=3"])


def test_override_types():
    cfg = override(ForgetCfg(), {"lr": "0.01", "augment": "false", "max_images": "none", "sessions": "7",
                                 "model_kwargs": '{"width": 0.25}'})
    assert cfg.lr == 0.01 and cfg.augment is False and cfg.max_images is None and cfg.sessions == 7
    assert cfg.model_kwargs == {"width": 0.25}
    assert override(CollectCfg(), {"datasets": "mnist10k,digits"}).datasets == ["mnist10k", "digits"]
    with pytest.raises(ConfigError, match="sessions"):
        override(ForgetCfg(), {"sessions": "many"})


def test_seed_from_is_stable():
    assert seed_from(0, "init") == seed_from(0, "init") != seed_from(1, "init")
    assert 0 <= seed_from("x", 3, 0.5) < 2 ** 31


def test_data_fraction_applies_under_a_max_images_cap():
    capped = replace(TINY, max_images=64)
    full = fg.session_subsets(capped, 256)
    half = fg.session_subsets(replace(capped, data_fraction=0.5), 256)
    assert len(full[0]) == 64 and len(half[0]) == 32
    assert torch.equal(half[0], full[1])  # the 50 % run's D0 is the 100 % run's D1
