"""Meta-dataset collection speed: trajectories per hour, stacked (torch.func + vmap) versus one trial at a time.

Both ways train the same trials of one collector group (simplenet on Fashion-MNIST, small sessions so the run
takes minutes) in the same process: the stacked way trains the whole group in one pass, the one-at-a-time way
trains the first `--single` trials of that group alone (per-trajectory cost does not depend on the trial's lr).
Prints both rates, their ratio, and how far a stacked trajectory is from its one-at-a-time twin.

    .venv/bin/python benchmarks/collect_speed.py [--images 4000] [--group-size 16] [--single 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--images", type=int, default=4000, help="|D0|, the top session (default 4000)")
    p.add_argument("--rate", type=float, default=0.5, help="fixed sampling rate (default 0.5)")
    p.add_argument("--sessions", type=int, default=7, help="sessions per trajectory (official: 7)")
    p.add_argument("--group-size", type=int, default=16, help="trials trained stacked")
    p.add_argument("--single", type=int, default=4, help="trials trained one at a time")
    p.add_argument("--eval-images", type=int, default=500, help="test images per accuracy check")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="stacked backend: auto | wide | vmap")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from know.data import get_dataset
    from know.forgetting import CollectCfg, collect_group, collect_one, trial_cfg
    from know.trajectory import Trajectory

    args = parse(argv)
    torch.set_num_threads(args.threads)
    cfg = CollectCfg(models=["simplenet"], datasets=[args.dataset], trials=args.group_size,
                     group_size=args.group_size, sessions=args.sessions, rate_min=args.rate, rate_max=args.rate,
                     max_images=args.images, eval_images=args.eval_images, device=args.device, seed=args.seed,
                     backend=args.backend)
    fc = trial_cfg(cfg, 0)
    print(f"simplenet on {args.dataset}: |D0|={args.images}, rate {args.rate}, {args.sessions} sessions, "
          f"batch {fc.batch_size}, backend {args.backend}, {args.threads} threads, device {args.device}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    get_dataset(args.dataset, "train")  # load (and cache) the raw data outside the timings
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        stacked_paths = collect_group(cfg, 0, f"{d}/stacked", progress=False)
        t_stacked, c_stacked = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        single_paths = [collect_one(cfg, i, f"{d}/single", progress=False) for i in range(args.single)]
        t_single, c_single = time.perf_counter() - t0, time.process_time() - c0
        a, b = Trajectory.load(stacked_paths[0]), Trajectory.load(single_paths[0])
        diff = max(float((a.params[n] - b.params[n]).abs().max()) for n in a.params)
        acc_a, acc_b = a.meta["test_acc"][-1], b.meta["test_acc"][-1]
    stacked = len(stacked_paths) / t_stacked * 3600
    single = args.single / t_single * 3600
    cpu_ratio = (len(stacked_paths) / c_stacked) / (args.single / c_single)
    print(f"stacked x{len(stacked_paths)}: {t_stacked:7.1f} s wall ({c_stacked:6.1f} s CPU) -> "
          f"{stacked:8.0f} trajectories/hour")
    print(f"one at a time x{args.single}: {t_single:7.1f} s wall ({c_single:6.1f} s CPU) -> "
          f"{single:8.0f} trajectories/hour")
    print(f"ratio stacked / one-at-a-time: {stacked / single:.2f}x wall, {cpu_ratio:.2f}x CPU time "
          f"(load avg now {os.getloadavg()[0]:.1f}; CPU time is the fairer measure on a shared machine)")
    print(f"trial 0 stacked vs alone: max |Δw| {diff:.2e}, smallest-session test acc {acc_a:.4f} vs {acc_b:.4f}")
    return {"stacked_per_hour": stacked, "single_per_hour": single, "ratio": stacked / single,
            "cpu_ratio": cpu_ratio, "max_diff": diff}


if __name__ == "__main__":
    main()
