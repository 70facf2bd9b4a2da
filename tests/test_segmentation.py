"""Segmentation (T-D): the DeepLabV3+ builder and head, loss and mIoU known answers, the joint flip, and the
upstream trajectory + downstream transfer on the canvas analogs with a tiny model (CPU seconds)."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import know.tasks.segmentation as seg
from know.config import ForgetCfg, TransferCfg
from know.data import ImageSet, get_dataset
from know.errors import DatasetMissing, KnowError
from know.forgetting import forget, pretrain
from know.models import create_model
from know.models.segmentation import CPU_LEAD, PAPER_LEAD, get_segmentation_head, replace_segmentation_head
from know.objectives import OBJECTIVES
from know.tasks import task_class
from know.tasks.base import Phase
from know.train import cpu_state, seeded_model, train_epoch
from know.trajectory import param_kinds
from know.transfer import run_transfer
from tests.conftest import require

# a tiny DeepLabV3+ (about 60 k parameters): the cpu lead, narrower
TINY = dict(CPU_LEAD, channels=(8, 8, 16, 16), decoder_channels=8)
FORGET = ForgetCfg(task="segmentation", dataset="canvas_source", model="deeplabv3plus", model_kwargs=TINY, size=32,
                   sessions=2, pretrain_epochs=1, epochs_per_session=1, batch_size=8, max_images=64, limit_steps=2,
                   eval_images=16, eval_batch_size=16, augment=False, device="cpu")
TRANSFER = TransferCfg(task="segmentation", dataset="canvas_target", probe_epochs=1, finetune_epochs=2, batch_size=8,
                       max_images=8, val_images=8, eval_images=8, eval_batch_size=8, limit_steps=2, device="cpu")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def as_set(pred: torch.Tensor, target: torch.Tensor, classes: int) -> ImageSet:
    """A set whose images are the one-hot logits of `pred`: an identity model predicts `pred`."""
    x = F.one_hot(pred, classes).permute(0, 3, 1, 2).float()
    return ImageSet(x, target.to(torch.uint8), classes, "hand", "test", torch.zeros(classes, 1, 1))


def miou(pred, target, classes: int = 4, **kw) -> float:
    return seg.evaluate_miou(torch.nn.Identity(), as_set(torch.tensor(pred), torch.tensor(target), classes), **kw)


# ---------------------------------------------------------------------------------------------- loss and metric
def test_miou_known_answers():
    t = [[[0, 1], [1, 2]]]
    assert miou(t, t) == 1.0  # perfect, with class 3 absent from both: left out of the mean
    # class 0: 1/1; class 1: TP 1, FN 1 -> 1/2; class 2: FP 1 -> 0/1; the ignored pixel counts for nothing
    assert miou([[[0, 1], [1, 2]]], [[[0, 1], [255, 1]]]) == pytest.approx((1 + 0.5 + 0) / 3)
    # a class predicted only on ignored pixels is absent: (1 + 1) / 2
    assert miou([[[0, 1], [3, 1]]], [[[0, 1], [255, 1]]]) == 1.0
    assert miou([[[0, 1]]], [[[255, 255]]]) == 0.0  # nothing labelled
    # one confusion matrix over the set, not a mean of per-image scores, whatever the batch size
    pred, target = [[[0, 0]], [[1, 1]]], [[[0, 1]], [[1, 1]]]  # class 0: 1/2, class 1: 2/3; per image: 0.5 and 1
    assert miou(pred, target, batch_size=1) == miou(pred, target) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert miou(pred, target, batch_size=1, max_batches=1) == pytest.approx((1 / 2 + 0) / 2)  # first image only


def test_miou_restores_the_mode():
    model = torch.nn.Identity()
    data = as_set(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 2)
    for mode in (True, False):
        model.train(mode)
        seg.evaluate_miou(model, data)
        assert model.training is mode


def test_loss_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.randint(0, 3, (2, 4, 4), dtype=torch.uint8)
    masks[0, :2] = 255
    loss = seg.seg_loss(logits, masks)
    keep = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep].long())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert not logits.grad[0, :, :2].any() and logits.grad[1].abs().sum() > 0
    none = seg.seg_loss(logits, torch.full_like(masks, 255))
    assert none.item() == 0.0  # no labelled pixel: no signal, no NaN


# ---------------------------------------------------------------------------------------------- model and head
def test_builder_leads_and_parameter_kinds():
    cpu = create_model("deeplabv3plus", 11, 3, 64, **CPU_LEAD)
    assert n_params(cpu) == 847_451  # ~0.85 M (timm's stem_width leaves the plain 7x7 stem at 64 channels)
    assert cpu(torch.zeros(2, 3, 64, 64)).shape == (2, 11, 64, 64)
    assert set(param_kinds(cpu).values()) == {"conv", "bias", "norm"}  # conv kernels, the head's bias, BN
    with torch.device("meta"):  # structure and size only: no 39 M-parameter init
        paper = create_model("deeplabv3plus", 21, 3, 512, **PAPER_LEAD)
    aspp = paper.decoder.aspp[0]
    assert [aspp.convs[i][0].dilation for i in (1, 2, 3)] == [(6, 6), (12, 12), (18, 18)]
    assert aspp.convs[1][0].groups == 1  # plain, not separable
    assert paper.decoder.block1[0].out_channels == 48 and paper.encoder.output_stride == 16
    assert paper.decoder.aspp[0].project[3].p == 0.0  # KerasCV's ASPP has no dropout (smp's default: 0.5)
    assert get_segmentation_head(paper)[1].out_channels == 21 and 39e6 < n_params(paper) < 39.5e6
    with pytest.raises(KnowError, match="never downloads"):
        create_model("deeplabv3plus", 11, encoder_weights="imagenet")
    with pytest.raises(KnowError, match="only reach timm encoders"):
        create_model("deeplabv3plus", 11, encoder_name="resnet18", channels=(8, 8, 16, 16))


def test_head_replacement_keeps_the_rest():
    model = seeded_model("deeplabv3plus", 0, 11, 3, 32, TINY)
    before = cpu_state(model)
    name, head = get_segmentation_head(model)
    assert name == "segmentation_head.0" and head.out_channels == 11
    torch.manual_seed(1)
    replace_segmentation_head(model, 5)
    after = cpu_state(model)
    assert after[f"{name}.weight"].shape[0] == 5 and not after[f"{name}.bias"].any()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith(name + "."))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5, 32, 32)
    torch.manual_seed(1)
    again = replace_segmentation_head(seeded_model("deeplabv3plus", 0, 11, 3, 32, TINY), 5)
    assert torch.equal(get_segmentation_head(again)[1].weight, after[f"{name}.weight"])  # the caller's RNG
    probe = seg.probe_trainable(model)
    assert {f"{name}.weight", f"{name}.bias"} <= probe
    assert all(k.startswith(name) or param_kinds(model)[k] == "norm" for k in probe)


def test_joint_flip_moves_image_and_mask_together():
    x = torch.arange(4 * 3 * 2 * 5, dtype=torch.float32).view(4, 3, 2, 5)
    y = torch.arange(4 * 2 * 5).view(4, 2, 5).to(torch.uint8)
    fx, fy = seg.JointFlip().apply(x, y, torch.Generator().manual_seed(1))
    flipped = torch.tensor([not torch.equal(a, b) for a, b in zip(fx, x, strict=True)])
    assert flipped.tolist() == (torch.rand(4, generator=torch.Generator().manual_seed(1)) < 0.5).tolist()
    assert 0 < flipped.sum() < 4  # seed 1 flips some, not all
    for i in range(4):
        assert torch.equal(fx[i], x[i].flip(-1) if flipped[i] else x[i])
        assert torch.equal(fy[i], y[i].flip(-1) if flipped[i] else y[i])
    again = seg.JointFlip().apply(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], fx) and torch.equal(again[1], fy)


def test_recipe_options_and_wrong_dataset():
    task = task_class("segmentation")(TransferCfg(task="segmentation", **seg.KERASCV_RECIPE), 0)
    probe, finetune = task.phases()
    assert probe.epochs == 0 and isinstance(finetune, Phase) and finetune.optimizer == "sgd"
    assert finetune.lr(0) == pytest.approx(0.00175) and finetune.weight_decay == 1e-4
    assert task.options.clipnorm == 10.0 and task.metric == "miou"
    with pytest.raises(KnowError, match="unknown --transfer.options"):
        task_class("segmentation")(TransferCfg(task="segmentation", options={"flip": 1}), 0)
    with pytest.raises(KnowError, match="no segmentation masks"):
        task_class("segmentation")(replace(TRANSFER, dataset="debug"), 0).load({"in_chans": 1, "img_size": 32, "norm": "pixel_mean"})


def test_clipnorm_clips_each_gradient():
    torch.manual_seed(0)
    model = seeded_model("deeplabv3plus", 0, 3, 3, 32, TINY)
    data = ImageSet(torch.randn(4, 3, 32, 32) * 100, torch.randint(0, 3, (4, 32, 32), dtype=torch.uint8), 3, "r",
                    "train", torch.zeros(3, 1, 1))
    seen = []
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.step = lambda: seen.extend(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)
    loss = train_epoch(model, data, torch.arange(4), opt, 4, torch.Generator().manual_seed(0), loss_fn=seg.seg_loss,
                       drop_last=True, clipnorm=1e-3)
    assert len(seen) > 10 and loss > 0 and max(seen) <= 1e-3 * (1 + 1e-5)


# ---------------------------------------------------------------------------------------------- upstream + transfer
@pytest.fixture(scope="module")
def trajectory():
    try:
        get_dataset("canvas_source", "train", size=32)
        get_dataset("canvas_target", "train", size=32, channels=3)
    except DatasetMissing as e:
        require(False, f"offline source data of the canvases missing: {e}")
    theta0 = pretrain(FORGET, progress=False)
    return forget(FORGET, theta0, progress=False)


def test_upstream_trajectory_reports_miou(trajectory):
    assert OBJECTIVES["segmentation"].metric == "miou"
    meta = trajectory.meta
    assert meta["metric"] == "miou" and meta["num_classes"] == 11 and meta["img_size"] == 32
    assert trajectory.num_sessions == 2 and all(0 <= m <= 1 for m in meta["test_metric"])
    assert trajectory.kinds["segmentation_head.0.weight"] == "conv"
    again = pretrain(FORGET, progress=False)  # no dropout draws from the unseeded global RNG: reproducible
    assert all(torch.equal(again[k], v) for k, v in trajectory.theta(0).items())


class Interrupt(Exception):
    pass


def test_transfer_probe_finetune_and_resume(trajectory, tmp_path, monkeypatch):
    state = {k: v.clone() for k, v in trajectory.theta(0).items()}
    kwargs = dict(TINY, img_size=32)
    ref = run_transfer(TRANSFER, state, "deeplabv3plus", kwargs, seed=0, progress=False)
    assert ref.metric == "miou" and 0 <= ref.final["miou"] <= 1
    assert [(r["phase"], r["epoch"], r["steps"]) for r in ref.log] == [("probe", 0, 1), ("finetune", 0, 1),
                                                                       ("finetune", 1, 1)]
    assert all(0 <= r["val_miou"] <= 1 for r in ref.log)
    # interrupted after the probe epoch and the first fine-tune epoch, resumed: the same log
    real, calls = seg.train_epoch, {"n": 0}

    def flaky(*args, **kw):
        if calls["n"] == 2:
            raise Interrupt
        calls["n"] += 1
        return real(*args, **kw)
    monkeypatch.setattr(seg, "train_epoch", flaky)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        run_transfer(TRANSFER, state, "deeplabv3plus", kwargs, seed=0, ckpt_path=ckpt, progress=False)
    monkeypatch.undo()
    assert run_transfer(TRANSFER, state, "deeplabv3plus", kwargs, seed=0, ckpt_path=ckpt, progress=False).log == ref.log
