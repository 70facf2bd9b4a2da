"""Training images/s of the profiles' networks on this device: what `--dry-run` turns FLOPs into hours with.

For each network of the cpu and paper profiles (at its input size), a few warm-up steps and then timed steps of
forward + backward + Adam at a fixed batch (32 on a CPU, 128 on a GPU), with the device's training setup (bf16
autocast and channels_last on CUDA). The rates are merged into benchmarks/step_times.json under the device kind
("cpu" or "cuda") with the hardware they were measured on; the dry run labels every other combination
"unmeasured". Prints one JSON line per network.

    .venv/bin/python benchmarks/step_times.py [--profiles cpu paper] [--steps 5] [--out benchmarks/step_times.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from know.cost import hardware_id  # noqa: E402
from know.device import autocast, fast_layout, resolve_device  # noqa: E402
from know.io import atomic_write_text  # noqa: E402
from know.models import create_model  # noqa: E402
from know.plan import model_key  # noqa: E402
from know.profiles import make_config  # noqa: E402

TABLES = (None, "table_pvtv2", "table_segmentation")  # the distinct upstream networks (T-C, T-E share T-B's)


def networks(profiles: list[str]) -> dict[str, tuple]:
    """{key: (name, kwargs, in_chans, size, classes, segmentation)} of the profiles' upstream networks and the
    collector's SimpleNet."""
    out = {}
    for profile in profiles:
        for table in TABLES:
            fc = make_config(profile, table=table).forget
            out[model_key(fc.model, fc.model_kwargs, fc.size)] = (fc.model, fc.model_kwargs, fc.channels or 3,
                                                                  fc.size, 10, fc.task == "segmentation")
    out[model_key("simplenet", {}, 32)] = ("simplenet", {}, 3, 32, 10, False)
    return out


def images_per_second(spec: tuple, dev: torch.device, batch: int, steps: int) -> float:
    name, kwargs, in_chans, size, classes, seg = spec
    model = fast_layout(create_model(name, num_classes=classes, in_chans=in_chans, img_size=size, **kwargs).to(dev))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, in_chans, size, size, device=dev)
    y = torch.randint(0, classes, (batch, size, size) if seg else (batch,), device=dev)
    for i in range(steps + 2):
        if i == 2:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        with autocast(dev, True):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", nargs="+", default=["cpu", "paper"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="default: 128 on a GPU, 32 on a CPU")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "step_times.json"))
    args = p.parse_args(argv)
    dev = resolve_device("auto")
    batch = args.batch or (128 if dev.type == "cuda" else 32)
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {}
    rates = table.setdefault(dev.type, {})
    for key, spec in networks(args.profiles).items():
        rate = images_per_second(spec, dev, batch, args.steps)
        rates[key] = round(rate, 1)
        print(json.dumps({"network": key, "device": hardware_id(str(dev)), "batch": batch,
                          "train_images_per_s": round(rate, 1)}), flush=True)
    table.setdefault("_measured_on", {})[dev.type] = f"{hardware_id(str(dev))}, {time.strftime('%Y-%m-%d')}"
    atomic_write_text(out, json.dumps(table, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
