"""Meta-dataset collection speed: trajectories per hour, stacked (torch.func + vmap) versus one trial at a time.

Both ways train the same trials of one collector group (simplenet on Fashion-MNIST, small sessions so the run
takes minutes) in the same process: the stacked way trains the whole group in one pass, the one-at-a-time way
trains the first `--single` trials of that group alone (per-trajectory cost does not depend on the trial's lr).
Prints both rates, their ratio, and how far a stacked trajectory is from its one-at-a-time twin. Then a
diagnosis with the profiler on single training steps of the same shape: how much of a one-at-a-time step is
convolution, and what a convolution costs per member when stacked. Their quotient is the ceiling of any stacking
that keeps these convolution kernels, even if everything else became free.

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
    p.add_argument("--no-diagnosis", action="store_true", help="skip the convolution-share diagnosis")
    return p.parse_args(argv)


CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
            "aten::_slow_conv2d_backward")


def _profile_ms(step, repeats: int) -> tuple[float, float]:
    """(whole step, convolutions only) in ms per call of `step`, from the profiler's self CPU times."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
    return total / repeats / 1e3, conv / repeats / 1e3


def diagnose(fc, k: int, in_chans: int, side: int, repeats: int = 10) -> dict:
    """Convolution share of one training step alone and stacked (K members), same batch size, random data."""
    import torch.nn.functional as F
    from know.train import Stack, StackedAdam, fast_layout, make_optimizer, seeded_model

    def model(seed):
        return fast_layout(seeded_model(fc.model, seed, 10, in_chans, side))

    x, y = torch.randn(k, fc.batch_size, in_chans, side, side), torch.randint(0, 10, (k, fc.batch_size))
    alone = model(0)
    opt = make_optimizer("adam", alone.parameters(), 1e-3)
    x0 = x[0].contiguous(memory_format=torch.channels_last)

    def single_step():
        loss = F.cross_entropy(alone(x0), y[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    stack = Stack(model(0), [model(m).state_dict() for m in range(k)], x[0, :2])
    sopt = StackedAdam(stack.params, torch.full((k,), 1e-3))

    def stacked_step():
        sopt.step(stack.params, stack.loss_and_grads(x, y)[1])

    one, one_conv = _profile_ms(single_step, repeats * 4)
    many, many_conv = _profile_ms(stacked_step, repeats)
    return {"single_ms": one, "single_conv_ms": one_conv, "stacked_ms": many / k, "stacked_conv_ms": many_conv / k,
            "ceiling": one / (many_conv / k), "backend": stack.backend}


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
    data = get_dataset(args.dataset, "train", size=fc.size)  # load (and cache) the raw data outside the timings
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
    out = {"stacked_per_hour": stacked, "single_per_hour": single, "ratio": stacked / single,
           "cpu_ratio": cpu_ratio, "max_diff": diff}
    if not args.no_diagnosis:
        d = diagnose(fc, args.group_size, data.shape[0], data.shape[-1])
        print(f"diagnosis, one training step at batch {fc.batch_size} (profiler, random data): alone "
              f"{d['single_ms']:.2f} ms, of which convolutions {d['single_conv_ms']:.2f} ms "
              f"({100 * d['single_conv_ms'] / d['single_ms']:.0f} %); stacked x{args.group_size} ({d['backend']}) "
              f"{d['stacked_ms']:.2f} ms per member, of which convolutions {d['stacked_conv_ms']:.2f} ms")
        print(f"ceiling of stacking with these convolution kernels (everything else free): "
              f"{d['ceiling']:.2f}x per step")
        out.update(diagnosis=d)
    return out


if __name__ == "__main__":
    main()
