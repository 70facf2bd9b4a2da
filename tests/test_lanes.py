"""The lanes backend: hand-written C kernels for K SimpleNets at once (know/lanes.py, know/kernels/lanes.c)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from know import lanes
from know.data import Augment
from know.models import create_model
from know.stack import Stack
from know.train import ADAM_BETAS, KERAS_ADAM_EPS


def _nets(k, in_chans, side, seed=0):
    torch.manual_seed(seed)
    return [create_model("simplenet", num_classes=7, in_chans=in_chans, img_size=side) for _ in range(k)]


@pytest.fixture(scope="module")
def lib():
    built = lanes.library()
    assert built is not None, "the lane kernels did not build: is a C compiler installed?"
    return built


@pytest.mark.parametrize("k,in_chans,side,batch", [(16, 1, 32, 19), (5, 3, 28, 9)])
def test_gradients_match_autograd(lib, k, in_chans, side, batch):
    """Every member's loss and gradients equal its own model's autograd, including padded lanes (K < 16), odd
    feature maps (28 -> 14 -> 7 -> 3 -> 1 floors the pools) and a batch that is not a multiple of the chunk."""
    _check_against_autograd(k, in_chans, side, batch)


def test_without_avx512_the_generic_code_agrees(tmp_path, monkeypatch):
    """Without AVX-512 the kernels compile their generic vector code (no intrinsics for the pool routes and the
    staging): it must agree with autograd too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(lanes, "FLAGS", lanes.FLAGS + ["-mno-avx512f", "-O1"])  # -O1: a 4x shorter build
    lanes.library.cache_clear()
    try:
        assert lanes.library() is not None
        _check_against_autograd(2, 1, 28, 6)  # odd maps; small, as the generic code is slow
    finally:
        lanes.library.cache_clear()


def _check_against_autograd(k, in_chans, side, batch):
    models = _nets(k, in_chans, side)
    x, y = torch.randn(k, batch, in_chans, side, side), torch.randint(0, 7, (k, batch))
    stack = Stack(models[0], [m.state_dict() for m in models], x[0], backend="lanes")
    assert stack.backend == "lanes"
    for n in (batch, batch - 5, batch):  # a short last batch, then the full size again (per-size batch buffers)
        loss, grads = stack.loss_and_grads(x[:, :n], y[:, :n])
        for m, model in enumerate(models):
            model.zero_grad()
            ref = F.cross_entropy(model(x[m, :n]), y[m, :n])
            ref.backward()
            torch.testing.assert_close(loss[m], ref.detach(), rtol=1e-5, atol=1e-6)
            for name, p in model.named_parameters():
                torch.testing.assert_close(grads[name][m], p.grad, rtol=1e-4, atol=1e-7, msg=f"member {m} {name}")
    logits = stack.logits(x[0])
    for m, model in enumerate(models):
        torch.testing.assert_close(logits[m], model(x[0]).detach(), rtol=1e-5, atol=1e-5)


def test_lane_adam_equals_stacked_adam(lib):
    """The fused C Adam over the flat lane storage does what StackedAdam does, member by member."""
    from know.stack import StackedAdam

    models = _nets(5, 1, 16)
    x, y = torch.randn(5, 6, 1, 16, 16), torch.randint(0, 7, (5, 6))
    stack = Stack(models[0], [m.state_dict() for m in models], x[0], backend="lanes")
    lrs = torch.tensor([1e-4, 3e-4, 1e-3, 2e-3, 4e-3])
    fused = stack.optimizer(lrs)
    mirror = {n: p.clone() for n, p in stack.params.items()}
    reference = StackedAdam(mirror, lrs)
    for _ in range(3):
        _, grads = stack.loss_and_grads(x, y)
        reference.step(mirror, {n: g.clone() for n, g in grads.items()})
        fused.step(stack.params, grads)
        for n in mirror:
            torch.testing.assert_close(stack.params[n], mirror[n], rtol=1e-5, atol=1e-8)
        for n, p in stack.params.items():  # the next gradients are taken at the reference's point
            p.copy_(mirror[n])


def test_fused_train_step_is_loss_and_grads_then_adam(lib):
    """LaneNet.train_step (chunks, gradients and Adam in one pass of the threads) is loss_and_grads followed by the
    optimizer's step, bit for bit, with one thread or two, and the two thread counts agree."""
    models = _nets(4, 1, 16)
    x, y = torch.randn(4, 22, 1, 16, 16), torch.randint(0, 7, (4, 22))
    lrs = torch.tensor([1e-4, 1e-3, 2e-3, 4e-3])
    finals = []
    for threads in (1, 2):
        nets = [lanes.LaneNet(models[0], 4, lib, ADAM_BETAS, KERAS_ADAM_EPS, threads=threads) for _ in range(2)]
        for net in nets:
            for n, p in net.params.items():
                p.copy_(torch.stack([m.get_parameter(n).detach() for m in models]))
        fused, separate = (net.optimizer(lrs) for net in nets)
        for _ in range(3):
            loss = nets[0].train_step(x, y, fused)
            reference, _ = nets[1].loss_and_grads(x, y)
            separate.step()
            assert torch.equal(loss, reference)
            assert all(torch.equal(nets[0].params[n], nets[1].params[n]) for n in nets[1].params)
        finals.append({n: p.clone() for n, p in nets[0].params.items()})
    assert all(torch.equal(finals[0][n], finals[1][n]) for n in finals[0])


def test_max_pool_ties_route_to_the_first_maximum(lib):
    """Constant images make every pooling window a tie: the gradient must go where PyTorch sends it."""
    models = _nets(3, 1, 16)
    x, y = torch.ones(3, 4, 1, 16, 16), torch.randint(0, 7, (3, 4))
    stack = Stack(models[0], [m.state_dict() for m in models], x[0], backend="lanes")
    _, grads = stack.loss_and_grads(x, y)
    for m, model in enumerate(models):
        F.cross_entropy(model(x[m]), y[m]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][m], p.grad, rtol=1e-4, atol=1e-7)


def test_threads_do_not_change_the_result(lib):
    """Chunks go to whichever thread is free, but their gradients are summed in chunk order: bitwise the same."""
    models = _nets(4, 1, 16)
    x, y = torch.randn(4, 30, 1, 16, 16), torch.randint(0, 7, (4, 30))
    results = []
    for threads in (1, 2, 2):
        net = lanes.LaneNet(models[0], 4, lib, ADAM_BETAS, KERAS_ADAM_EPS, threads=threads)
        for n, p in net.params.items():
            p.copy_(torch.stack([m.get_parameter(n).detach() for m in models]))
        loss, grads = net.loss_and_grads(x, y)
        results.append((loss.clone(), {n: g.clone() for n, g in grads.items()}))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(torch.equal(grads[n], results[0][1][n]) for n in grads)


def test_other_models_and_large_stacks_are_not_lanes(lib):
    models = _nets(17, 1, 16)
    x = torch.randn(2, 1, 16, 16)
    assert Stack(models[0], [m.state_dict() for m in models], x).backend == "wide"  # 17 > 16 lanes
    other = [nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(768, 2))
             for _ in range(2)]
    assert lanes.LaneNet.build(other[0], 2, ADAM_BETAS, KERAS_ADAM_EPS) is None
    with pytest.raises(ValueError, match="lanes backend"):
        Stack(other[0], [m.state_dict() for m in other], x, backend="lanes")


def test_a_lane_twin_that_disagrees_is_not_used(lib, monkeypatch):
    monkeypatch.setattr(lanes.LaneNet, "logits", lambda self, x: torch.zeros(self.k, x.shape[0], 7))
    models = _nets(2, 1, 16)
    stack = Stack(models[0], [m.state_dict() for m in models], torch.randn(2, 1, 16, 16))
    assert stack.backend == "wide"
    for name, p in models[1].named_parameters():
        assert torch.equal(stack.member(1)[name], p.detach())


def test_build_is_cached_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lanes.library.cache_clear()
    try:
        assert lanes.library() is not None
        folder = tmp_path / "know" / "kernels"
        built = sorted(p.name for p in folder.iterdir())
        assert len(built) == 1 and built[0].startswith("lanes_")  # the atomic build left no temporary folder
        lanes.library.cache_clear()
        assert lanes.library() is not None and sorted(p.name for p in folder.iterdir()) == built  # reused
        lanes.library.cache_clear()
        monkeypatch.setenv("KNOW_CKERNEL", "0")
        assert lanes.library() is None
        models = _nets(2, 1, 16)
        assert Stack(models[0], [m.state_dict() for m in models], torch.randn(2, 1, 16, 16)).backend == "wide"
    finally:
        lanes.library.cache_clear()


def test_augment_pick_equals_one_member_at_a_time():
    """A stacked batch's augmentation (one warp for all members) equals each member's own, draw for draw."""
    x = torch.randn(40, 1, 16, 16)
    idxs = [torch.randperm(40, generator=torch.Generator().manual_seed(i))[:6] for i in range(3)]
    one = torch.stack([Augment()(x[i], torch.Generator().manual_seed(m)) for m, i in enumerate(idxs)])
    picked = Augment().pick(x, idxs, [torch.Generator().manual_seed(m) for m in range(3)])
    assert picked.shape == (3, 6, 1, 16, 16) and torch.equal(one, picked)
