"""The prepared GPU check (benchmarks/gpu_check.sh): a few minutes on a lent GPU, one JSON line per measurement.

1. known_prediction: KNOW prediction of every parameter of the paper's ResNet-18 (11.2 M, CIFAR-100 head), 3
   recurrences, on the device, best of 3 after a warm-up (target < 0.1 s on a GPU; the paper: 3.01 s, hardware
   unknown), and its largest difference from the CPU's fused kernel (the rule: <= 2e-6; KNOWN runs in fp32).
2. train_throughput (CUDA only): resnet18_know training on CIFAR-shaped data (3x32x32, batch 128, the paper's
   augmentation), images/s of our loop (device-resident data, index batches, the warp on the GPU, bf16 autocast,
   channels_last) against a plain PyTorch loop (DataLoader with worker processes, per-sample torchvision transforms,
   fp32) in the same run (target >= 3x).
3. step_times (CUDA only): benchmarks/step_times.py for the paper profile's networks, written to $OUT when set.
4. rehearsal: the full-size paper-profile rehearsal of reproduce/table1.py (benchmarks/rehearse.py) on the device.
On a CPU the CUDA-only lines say why they were skipped; the others run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from know.config import CostCfg  # noqa: E402
from know.cost import hardware_id, shaped_trajectory  # noqa: E402
from know.data import Augment  # noqa: E402
from know.device import autocast, fast_layout, resolve_device  # noqa: E402
from know.errors import WeightsError  # noqa: E402
from know.known import KNOWN, load_official  # noqa: E402
from know.models import create_model  # noqa: E402
from know.predict import create_predictor, predict  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def known_prediction(dev: torch.device) -> None:
    c = CostCfg(device=str(dev))
    traj = shaped_trajectory("resnet18_know", {}, c, dev)
    try:  # the timing does not depend on the weights' values: a fresh KNOWN stands in when the files are missing
        load_official("conv")
        pred, weights = create_predictor("known", known="official"), "official"
    except WeightsError:
        pred, weights = create_predictor("known", known=KNOWN()), "random (the official files are not here)"
    run = lambda: predict(traj, pred, steps=3)  # noqa: E731
    out = run()  # warm-up: weights, kernels, first-touch memory
    best = float("inf")
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    cpu = predict(shaped_trajectory("resnet18_know", {}, c, torch.device("cpu")), pred, steps=3)
    err = max(float((a[k].float().cpu() - b[k].float()).abs().max()) for a, b in zip(out, cpu) for k in a
              if a[k].is_floating_point())
    emit(check="known_prediction", device=hardware_id(str(dev)), weights=weights, params=traj.num_params, steps=3,
         seconds=round(best, 4), target_s=0.1, paper_s=3.01, max_abs_diff_vs_cpu=err, rule=2e-6)


class _PerSample(torch.utils.data.Dataset):
    """The usual pipeline: uint8 images, per-sample torchvision transforms in worker processes."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        import torchvision.transforms.v2 as T

        self.images, self.labels = images, labels
        self.tf = T.Compose([T.ToDtype(torch.float32, scale=True),
                             T.RandomAffine(degrees=10, translate=(0.15, 0.15), scale=(0.7, 1.3))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.tf(self.images[i]), self.labels[i]


def _train(model, batches, dev, amp: bool, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    seen, t = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 3:  # after warm-up (cudnn.benchmark, allocator)
            torch.cuda.synchronize()
            t, seen = time.perf_counter(), 0
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with autocast(dev, amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if i == steps + 3:
            break
    torch.cuda.synchronize()
    return seen / (time.perf_counter() - t)


def train_throughput(dev: torch.device, steps: int = 60, batch: int = 128) -> None:
    if dev.type != "cuda":
        emit(check="train_throughput", skipped="needs CUDA: the target (>= 3x a DataLoader loop) is for the GPU path")
        return
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20000, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (20000,), generator=g)
    ours_model = fast_layout(create_model("resnet18_know", num_classes=10, in_chans=3).to(dev))
    x = images.to(dev).float().div_(255)
    y = labels.to(dev)
    aug, gen = Augment(), torch.Generator(device=dev).manual_seed(0)

    def resident():
        while True:
            for idx in torch.randperm(len(y), device=dev).split(batch):
                yield aug(x[idx], gen), y[idx]
    ours = _train(ours_model, resident(), dev, True, steps)
    plain_model = create_model("resnet18_know", num_classes=10, in_chans=3).to(dev)
    loader = torch.utils.data.DataLoader(_PerSample(images, labels), batch_size=batch, shuffle=True,
                                         num_workers=min(8, os.cpu_count() or 1), pin_memory=True,
                                         persistent_workers=True)

    def plain():
        while True:
            yield from loader
    ref = _train(plain_model, plain(), dev, False, steps)
    emit(check="train_throughput", device=hardware_id(str(dev)), model="resnet18_know", batch=batch,
         ours_images_per_s=round(ours, 1), dataloader_images_per_s=round(ref, 1), ratio=round(ours / ref, 2),
         target_ratio=3.0)


def step_times(dev: torch.device) -> None:
    if dev.type != "cuda":
        emit(check="step_times", skipped="needs CUDA: the CPU's rates come from benchmarks/step_times.py here")
        return
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp()) / "step_times.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_times.py"), "--profiles", "paper",
                          "--out", str(out)], capture_output=True, text=True, timeout=240)
    for line in res.stdout.splitlines():
        emit(check="step_times", **json.loads(line))
    if res.returncode:
        emit(check="step_times", error=res.stderr[-500:])


def rehearsal() -> None:
    t = time.time()
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rehearse.py"), "table1"], capture_output=True,
                         text=True, timeout=420)
    emit(check="rehearsal", script="table1", ok=res.returncode == 0, seconds=round(time.time() - t, 1),
         **({} if res.returncode == 0 else {"error": res.stderr[-800:]}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-rehearsal", action="store_true", help="leave out the rehearsal (the tests run it)")
    args = p.parse_args(argv)
    dev = resolve_device("auto")
    emit(check="device", device=hardware_id(str(dev)), torch=torch.__version__)
    known_prediction(dev)
    train_throughput(dev)
    step_times(dev)
    if not args.skip_rehearsal:
        rehearsal()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
