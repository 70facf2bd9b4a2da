"""A full-size rehearsal of the paper path: a reproduce script's `paper` profile, with the real models at their real
sizes and the real dataset loaders reading small files written in the datasets' real on-disk formats
(`know.datasets.fake.write_rehearsal_data`), through every stage (pretrain, forget, collect, meta-train, predict,
transfer, aggregate), capped to a few steps per phase. The numbers it produces mean nothing; it fails when the paper
path breaks (a typo in a profile, a shape error, a loader that cannot read its files).

Caps (documented overrides, never for results): --limit-steps 2 (optimizer steps per phase, batches per
evaluation, BN-recalibration batches and a 3x3 landscape lattice), --limit-batch 2 (every batch), --trials 1; T-A
runs its 100 % column only (--fractions=[1.0]: the other fractions differ only in a number) and T-D its
DeepLabV3+ ResNet-50 at 128x128 instead of 512x512 (--forget.size=128), to fit the CI's time; the PVTv2 tables
start from a random pvt_v2_b0 in a state_dict file instead of timm's ImageNet weights (--forget.init=FILE). All scripts share one
unit cache, as they do in a real run (T-B, T-C and T-E share the PVTv2 trajectory; every KNOWN-ours row the
collector and meta-training). On a cluster without GPUs add --slurm-cpu (no GPU gres, 2 CPUs).

    .venv/bin/python benchmarks/rehearse.py table1 [table_pvtv2 ...] [--executor debug|local|slurm] [--data DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from know.data import data_root  # noqa: E402
from know.datasets.fake import REHEARSAL, write_rehearsal_data  # noqa: E402
from know.io import atomic_save  # noqa: E402
from know.models import create_model  # noqa: E402

SCRIPTS = ("table1", "table_segmentation", "table_ablation_s", "table_cost", "figure_scale", "table_pvtv2",
           "figure_landscape", "table_pacs", "figure_forgetting", "table_captioning")  # lanes: every other one
CAPS = ["--limit-steps", "2", "--limit-batch", "2", "--trials", "1"]
EXTRA = {"table1": ["--fractions=[1.0]"], "table_segmentation": ["--forget.size=128"]}
PVT_TABLES = ("table_pvtv2", "table_pacs", "table_captioning")  # their Θ0 is timm's ImageNet pvt_v2_b0 ...
PVT_FILE = "pvt_v2_b0_random.pt"  # ... replaced by a random one in a state_dict file (--forget.init=FILE, no download)
SLURM_CPU = ["--slurm.gpus_per_node=0", "--slurm.cpus_per_task=2", "--slurm.mem_gb=6", "--slurm.timeout_min=30"]


def command(script: str, data: Path, out: Path, executor: str, slurm_cpu: bool = False) -> list[str]:
    """The rehearsal command line of one reproduce script."""
    init = [f"--forget.init={data / PVT_FILE}"] if script in PVT_TABLES else []
    return [sys.executable, str(REPO / "reproduce" / f"{script}.py"), "--profile", "paper", "--executor", executor,
            *CAPS, *EXTRA.get(script, []), *init, *(SLURM_CPU if slurm_cpu else []), "--data-root", str(data),
            "--results-dir", str(out / "results"), "--cache-dir", str(out / "cache")]


def write_data(data: Path) -> Path:
    """The fake datasets, and the state_dict file that stands in for timm's pretrained pvt_v2_b0."""
    write_rehearsal_data(data, data_root())
    if not (data / PVT_FILE).is_file():
        classes = REHEARSAL["imagenet"]["classes"]  # the fake ImageNet's (the real one: 1000, as timm's head)
        atomic_save(create_model("timm:pvt_v2_b0", num_classes=classes, in_chans=3, img_size=224).state_dict(),
                    data / PVT_FILE)
    return data


def rehearse(script: str, data: Path, out: Path, executor: str = "debug", slurm_cpu: bool = False,
             timeout: float = 1800, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KNOW_OFFLINE="1")  # never download: the files are the fake ones
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run(command(script, data, out, executor, slurm_cpu), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def rehearse_in_lanes(scripts: list[str], data: Path, out: Path, lanes: int = 2,
                      timeout: float = 1800) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    """Every script, in `lanes` parallel chains of one thread each (the CPUs' cores kept busy; units that chains
    share, such as the collector, are computed once: the second waits on the unit's lock). {script: (result, s)}."""
    from concurrent.futures import ThreadPoolExecutor

    def chain(part: list[str]) -> dict:
        done = {}
        for script in part:
            t = time.time()
            done[script] = (rehearse(script, data, out, timeout=timeout, threads=1), time.time() - t)
        return done

    parts = [list(scripts[i::lanes]) for i in range(lanes)]
    with ThreadPoolExecutor(lanes) as pool:
        return {k: v for part in pool.map(chain, parts) for k, v in part.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scripts", nargs="*", default=list(SCRIPTS), help=f"default: all ({', '.join(SCRIPTS)})")
    p.add_argument("--executor", default="debug", choices=["debug", "local", "slurm"])
    p.add_argument("--slurm-cpu", action="store_true", help="Slurm without GPUs: no gres, 2 CPUs per task")
    p.add_argument("--data", default=None, help="folder for the fake datasets (default: a temporary one)")
    p.add_argument("--out", default=None, help="results and unit cache (default: a temporary folder)")
    p.add_argument("--lanes", type=int, default=1, help="debug executor: parallel chains of one thread each")
    args = p.parse_args(argv)
    data = Path(args.data or tempfile.mkdtemp(prefix="know-rehearsal-data-"))
    out = Path(args.out or tempfile.mkdtemp(prefix="know-rehearsal-"))
    write_data(data)
    if args.lanes > 1:
        results = rehearse_in_lanes(args.scripts, data, out, args.lanes)
    else:
        results = {}
        for script in args.scripts:
            t = time.time()
            results[script] = rehearse(script, data, out, args.executor, args.slurm_cpu), time.time() - t
    for script, (res, seconds) in results.items():
        print(f"{script}: {'ok' if res.returncode == 0 else 'FAILED'} in {seconds:.0f} s", flush=True)
        if res.returncode:
            print(res.stdout[-2000:] + res.stderr[-4000:], file=sys.stderr)
    return 1 if any(res.returncode for res, _ in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
