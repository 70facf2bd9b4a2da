"""Transfer: what each phase trains, the schedules, results and selection, splits, resuming (CPU seconds)."""
import json
import math
from dataclasses import replace

import pytest
import torch

import know.tasks.classification as cls
import know.transfer as tr
from know.config import ForgetCfg, TransferCfg
from know.errors import KnowError
from know.forgetting import forget, pretrain
from know.tasks.base import cosine, finetune_lr, upstream_info
from know.tasks.classification import build_transfer_model
from know.train import seeded_model
from know.transfer import run_transfer

CFG = TransferCfg(dataset="debug", probe_epochs=1, finetune_epochs=0, batch_size=32, max_images=96, device="cpu",
                  augment=False)


def _upstream(name: str, in_chans: int = 1) -> dict:
    return {k: v.clone() for k, v in seeded_model(name, 0, 4, in_chans, 32).state_dict().items()}


def _final_state(tmp_path, cfg, state, name, seed=0):
    ckpt = tmp_path / f"{name}-{cfg.probe_epochs}-{cfg.finetune_epochs}.pt"
    res = run_transfer(cfg, state, name, {}, None, seed, ckpt, progress=False)
    return res, torch.load(ckpt, weights_only=False)["model"]


@pytest.mark.parametrize("name,frozen,trained", [
    ("debugnet", ["conv.weight", "conv.bias"], ["bn.weight", "bn.bias", "fc.weight", "fc.bias"]),
    ("simplenet", ["features.0.weight", "features.9.bias", "fc.weight", "fc.bias"], ["head.weight", "head.bias"]),
])
def test_probe_freezes_conv_and_dense_but_not_norm_and_head(tmp_path, name, frozen, trained):
    state = _upstream(name)
    start = build_transfer_model(state, name, {}, 4, 4, 0, "cpu").state_dict()
    _, after = _final_state(tmp_path, CFG, state, name)
    for key in frozen:
        assert torch.equal(after[key], start[key]), f"{key} moved in phase 1"
    for key in trained:
        assert not torch.equal(after[key], start[key]), f"{key} did not train in phase 1"
    if name == "debugnet":  # BN runs in training mode: its statistics adapt
        assert not torch.equal(after["bn.running_mean"], start["bn.running_mean"])


def test_finetune_trains_everything(tmp_path):
    state = _upstream("debugnet")
    start = build_transfer_model(state, "debugnet", {}, 4, 4, 0, "cpu").state_dict()
    _, after = _final_state(tmp_path, replace(CFG, probe_epochs=0, finetune_epochs=1), state, "debugnet")
    assert all(not torch.equal(after[k], start[k]) for k in ("conv.weight", "conv.bias", "bn.weight", "fc.weight"))


def test_cosine_schedule_values():
    assert cosine(0, 100, 4e-4) == pytest.approx(4e-4)
    assert cosine(50, 100, 4e-4) == pytest.approx(2e-4)
    assert cosine(99, 100, 4e-4) == pytest.approx(0.5 * 4e-4 * (1 + math.cos(math.pi * 0.99)))
    assert cosine(100, 100, 4e-4) == pytest.approx(0.0, abs=1e-12)
    assert cosine(100, 100, 4e-4, 1e-4) == pytest.approx(1e-4)


def test_warmup_flat_cosine_is_the_pvtv2_recipe():
    """5 warm-up epochs to 2.5e-3, 20 flat, 20 cosine down to 1e-4 (the authors' PVTv2 code)."""
    lr = finetune_lr(TransferCfg(schedule="warmup_flat_cosine", finetune_epochs=45, warmup_epochs=5, flat_epochs=20,
                                 finetune_lr=2.5e-3, min_lr=1e-4))
    assert [lr(e) for e in range(5)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2.5e-3])
    assert lr(5) == lr(24) == 2.5e-3 and lr(25) == pytest.approx(2.5e-3)
    assert lr(44) == pytest.approx(1e-4 + 0.5 * 2.4e-3 * (1 + math.cos(math.pi * 19 / 20)))
    with pytest.raises(KnowError, match="schedule=linear"):
        finetune_lr(TransferCfg(schedule="linear"))


def test_log_schedule_and_best_final(tmp_path):
    cfg = replace(CFG, probe_epochs=2, finetune_epochs=4, test_each_epoch=True)
    res = run_transfer(cfg, _upstream("debugnet"), "debugnet", seed=3, progress=False)
    assert [(r["phase"], r["epoch"]) for r in res.log] == [("probe", 0), ("probe", 1)] + [
        ("finetune", e) for e in range(4)]
    assert [r["lr"] for r in res.log] == pytest.approx([1e-3, 1e-3] + [cosine(e, 4, 4e-4) for e in range(4)])
    accs = [r["test_acc"] for r in res.log]
    assert res.final_acc == accs[-1] and res.selected == res.final and res.selected_epoch == 5  # select="last"
    assert all(set(r) == {"phase", "epoch", "lr", "train_loss", "steps", "test_acc"} for r in res.log)
    assert res.to_dict()["config"]["dataset"] == "debug" and res.wall_time_s > 0


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = replace(CFG, probe_epochs=2, finetune_epochs=2, augment=True)
    state = _upstream("debugnet")
    reference = run_transfer(cfg, state, "debugnet", seed=1, progress=False)
    real, calls = cls.train_epoch, {"n": 0}

    def flaky(*args, **kwargs):
        if calls["n"] == 3:  # two probe epochs and the first fine-tune epoch are done
            raise Interrupt
        calls["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(cls, "train_epoch", flaky)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        run_transfer(cfg, state, "debugnet", seed=1, ckpt_path=ckpt, progress=False)
    monkeypatch.undo()
    assert len(torch.load(ckpt, weights_only=False)["log"]) == 3
    resumed = run_transfer(cfg, state, "debugnet", seed=1, ckpt_path=ckpt, progress=False)
    assert resumed.log == reference.log
    with pytest.raises(KnowError, match="another transfer run"):
        run_transfer(cfg, state, "debugnet", seed=2, ckpt_path=ckpt, progress=False)


def test_input_shape_follows_upstream_model():
    state = _upstream("simplenet", in_chans=3)  # a 3-channel upstream model, gray downstream data
    res = run_transfer(CFG, state, "simplenet", seed=0, progress=False)
    assert 0 <= res.final_acc <= 1
    assert cls.upstream_spec(state, {}) == (3, 32, "pixel_mean") and cls.infer_num_classes("simplenet", {}, state) == 4


def test_wrong_architecture_is_a_clear_error():
    with pytest.raises(KnowError, match="does not fit"):
        run_transfer(CFG, _upstream("debugnet"), "debugnet", {"width": 8}, 4, progress=False)


def test_cli_from_trajectory(tmp_path, capsys):
    fcfg = ForgetCfg(model="debugnet", dataset="debug", sessions=2, batch_size=64, max_images=64, device="cpu")
    traj_path = tmp_path / "traj.safetensors"
    forget(fcfg, pretrain(fcfg, progress=False), progress=False).save(traj_path)
    out = tmp_path / "res.json"
    assert tr.main(["--checkpoint", str(traj_path), "--out", str(out), "--dataset=debug", "--probe-epochs=1",
                    "--finetune-epochs=1", "--max-images=64", "--device=cpu"]) == 0
    res = json.loads(out.read_text())
    assert len(res["log"]) == 2 and res["upstream_model"] == "debugnet"
    assert "final acc" in capsys.readouterr().out


def test_validation_is_carved_from_train_fixed_across_trials_and_selects(tmp_path):
    """val_images come from the train split (never the test split), the same for every trial; best_val reports
    the test metric of the epoch with the best validation metric."""
    cfg = replace(CFG, probe_epochs=1, finetune_epochs=3, val_images=40, max_images=64, select="best_val",
                  test_each_epoch=True)
    tasks = [cls.Classification(cfg, seed) for seed in (0, 1)]
    up = upstream_info(_upstream("debugnet"), "debugnet", {})
    (tr0, va0, te0), (tr1, va1, te1) = (t.load(up) for t in tasks)
    assert len(tr0) == 64 and len(va0) == 40 and torch.equal(va0.x, va1.x) and torch.equal(tr0.x, tr1.x)
    full = cls.get_dataset("debug", "train", channels=1, size=32)
    rows = {tuple(r.flatten().tolist()) for r in full.x}
    assert all(tuple(r.flatten().tolist()) in rows for r in va0.x)  # from the train split
    res = run_transfer(cfg, _upstream("debugnet"), "debugnet", seed=0, progress=False)
    vals = [r["val_acc"] for r in res.log]
    assert res.selected_epoch == vals.index(max(vals)) and res.selected["acc"] == res.log[res.selected_epoch]["test_acc"]
    with pytest.raises(KnowError, match="needs a validation split"):
        run_transfer(replace(cfg, val_images=0), _upstream("debugnet"), "debugnet", progress=False)
    with pytest.raises(KnowError, match="leaves no training images"):
        run_transfer(replace(cfg, val_images=10_000), _upstream("debugnet"), "debugnet", progress=False)


def test_damaged_checkpoint_is_ignored_not_trusted(tmp_path):
    from know.io import read_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"fingerprint": 1, "log": []}, ckpt)
    assert read_checkpoint(ckpt)["fingerprint"] == 1
    ckpt.write_bytes(ckpt.read_bytes()[:20])  # truncated from outside
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert read_checkpoint(ckpt) is None
    assert read_checkpoint(tmp_path / "missing.pt") is None


def test_early_stop_and_step_limit_end_phases_and_resume_where_they_stopped(tmp_path, monkeypatch):
    """early_stop ends a phase after that many epochs without a better val metric; limit_steps caps a phase's
    optimizer steps (rehearsals); a run interrupted after a phase ended early resumes into the next phase."""
    cfg = replace(CFG, probe_epochs=6, finetune_epochs=2, val_images=40, max_images=64, select="best_val",
                  early_stop=1)
    vals = iter([0.5, 0.4, 0.6, 0.6, 0.7, 0.1, 0.2, 0.3])  # probe: best 0.5, then worse: stop after 2 epochs
    real = cls.Classification.evaluate

    def scripted(self, model, data, max_batches):
        out = real(self, model, data, max_batches)
        return {"acc": next(vals)} if data.split == "train" else out  # val sets come from the train split
    monkeypatch.setattr(cls.Classification, "evaluate", scripted)
    res = run_transfer(cfg, _upstream("debugnet"), "debugnet", seed=0, ckpt_path=tmp_path / "c.pt", progress=False)
    assert [(r["phase"], r["epoch"]) for r in res.log] == [("probe", 0), ("probe", 1), ("finetune", 0),
                                                          ("finetune", 1)]
    assert res.selected_epoch == 2  # val 0.6 at finetune 0, the first best
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    assert ckpt["completed"] == ["probe", "finetune"]
    monkeypatch.undo()
    limited = run_transfer(replace(CFG, probe_epochs=3, finetune_epochs=3, limit_steps=2), _upstream("debugnet"),
                           "debugnet", seed=0, progress=False)
    assert [r["steps"] for r in limited.log] == [2, 2]  # 96 images / 32 = 3 steps an epoch, 2 per phase
