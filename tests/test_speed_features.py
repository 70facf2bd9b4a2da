"""The GPU path's speed features, each checked on the CPU for equal results within a stated tolerance (or skipped
with the reason): bf16 autocast, channels_last, TF32 / cudnn.benchmark, torch.compile, KNOWN kept in full fp32."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from know import device
from know.models import create_model


def _batch(in_chans=1, n=8, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_chans, side, side, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_autocast_is_bf16_on_cuda_and_exact_fp32_on_a_cpu():
    assert isinstance(device.autocast(torch.device("cpu"), True), contextlib.nullcontext)  # CPU runs stay fp32
    assert isinstance(device.autocast(torch.device("cuda"), False), contextlib.nullcontext)
    ctx = device.autocast(torch.device("cuda"), True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_bf16_autocast_changes_a_loss_by_less_than_two_percent():
    """What bf16 autocast does to the numbers, measured with the CPU's autocast on a small convnet: the training
    loss agrees with fp32 within 2 % (bf16 keeps 8 mantissa bits; accumulation stays fp32)."""
    torch.manual_seed(0)
    model = create_model("resnet18_know", num_classes=4, in_chans=1, width=0.125)
    x, y = _batch()
    ref = F.cross_entropy(model(x), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = F.cross_entropy(model(x), y)
    assert abs(float(low) - float(ref)) <= 0.02 * abs(float(ref))


def test_channels_last_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    a = create_model("resnet18_know", num_classes=4, in_chans=1, width=0.125)
    b = create_model("resnet18_know", num_classes=4, in_chans=1, width=0.125)
    b.load_state_dict(a.state_dict())
    device.fast_layout(b)
    assert b.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = _batch()
    la, lb = F.cross_entropy(a(x), y), F.cross_entropy(b(x), y)
    la.backward()
    lb.backward()
    assert abs(float(la) - float(lb)) < 1e-5
    torch.testing.assert_close(a.conv1.weight.grad, b.conv1.weight.grad.contiguous(), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 and cudnn.benchmark exist only on CUDA devices")
def test_cuda_is_configured_for_tf32_and_cudnn_benchmark():
    device.resolve_device("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    with device.full_fp32():
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32


def test_full_fp32_restores_the_setting():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    with device.full_fp32():
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = before


def test_compile_flag_trains_the_same_model(monkeypatch, tmp_path):
    """--transfer.compile runs the training through torch.compile and saves the uncompiled state. The test compiles
    with the aot_eager backend (the same graph capture and autograd as inductor, without its C++ build, which takes
    about 35 s per graph on 2 cores here); results equal the eager run within 1e-5."""
    from dataclasses import replace

    from know.config import TransferCfg
    from know.train import seeded_model
    from know.transfer import run_transfer

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="aot_eager"))
    cfg = TransferCfg(dataset="debug", probe_epochs=1, finetune_epochs=1, batch_size=32, max_images=64,
                      device="cpu", augment=False)
    state = seeded_model("debugnet", 0, 4, 1, 16).state_dict()
    eager = run_transfer(cfg, state, "debugnet", seed=1, progress=False)
    comp = run_transfer(replace(cfg, compile=True), state, "debugnet", seed=1, ckpt_path=tmp_path / "c.pt",
                        progress=False)
    assert comp.final == eager.final
    assert all(abs(a["train_loss"] - b["train_loss"]) < 1e-5 for a, b in zip(comp.log, eager.log))
    saved = torch.load(tmp_path / "c.pt", weights_only=False)["model"]
    assert not any(k.startswith("_orig_mod") for k in saved)  # the uncompiled names
