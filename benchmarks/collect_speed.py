"""Meta-dataset collection speed: trajectories per hour, stacked versus one trial at a time.

Both ways train the same trials of one collector group (simplenet on Fashion-MNIST, small sessions so a run takes
seconds) in the same process, alternately `--repeats` times; the best run of each way counts, as in timeit, since
other load on a shared machine only ever slows a run down. The stacked way trains the whole group in one pass
(backend auto: the lanes kernels where they build, see know/lanes.py); the one-at-a-time way trains the first
`--single` trials of that group alone (per-trajectory cost does not depend on the trial's lr). Prints both rates,
their ratio, and how far a stacked trajectory is from its one-at-a-time twin. Then a diagnosis on single training
steps of the same shape (random data): a step alone, and per member of a stack with each backend; for the wide
backend (oneDNN grouped convolutions) also the convolutions' share, whose quotient with a step alone caps any
stacking that keeps them.

    .venv/bin/python benchmarks/collect_speed.py [--images 4000] [--group-size 16] [--single 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
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
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of both ways; the best counts (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="stacked backend: auto | lanes | wide | vmap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-diagnosis", action="store_true", help="skip the per-step diagnosis")
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
    """ms per training step alone and per member of a K-stack (wide with its convolutions, lanes), random data."""
    import torch.nn.functional as F
    from know.device import fast_layout
    from know.stack import Stack
    from know.train import make_optimizer, seeded_model

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

    def stacked_step(backend):
        stack = Stack(model(0), [model(m).state_dict() for m in range(k)], x[0, :2], backend)
        sopt = stack.optimizer(torch.full((k,), 1e-3))
        return lambda: sopt.step(stack.params, stack.loss_and_grads(x, y)[1])

    wide_step = stacked_step("wide")
    out = {"single_ms": _timed_ms(single_step, repeats * 4), "wide_ms": _timed_ms(wide_step, repeats) / k,
           "single_conv_ms": _profile_ms(single_step, repeats * 4)[1],
           "wide_conv_ms": _profile_ms(wide_step, repeats)[1] / k}
    out["wide_ceiling"] = out["single_ms"] / out["wide_conv_ms"]
    try:
        out["lanes_ms"] = _timed_ms(stacked_step("lanes"), repeats) / k
    except ValueError:  # no C compiler: the lanes backend is unavailable
        pass
    return out


def _timed_ms(step, repeats: int) -> float:
    """Wall ms per call of `step` after two warm-up calls."""
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats * 1e3


def main(argv=None) -> dict:
    from know.data import get_dataset
    from know.config import CollectCfg
    from know.forgetting import collect_group, collect_one, trial_cfg
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
    walls, cpus = {"stacked": [], "single": []}, {"stacked": [], "single": []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):  # alternated, so a noisy neighbour hits both ways alike
            for way, run in (("stacked", lambda: collect_group(cfg, 0, f"{d}/stacked{r}", progress=False)),
                             ("single", lambda: [collect_one(cfg, i, f"{d}/single{r}", progress=False)
                                                 for i in range(args.single)])):
                t0, c0 = time.perf_counter(), time.process_time()
                paths = run()
                walls[way].append(time.perf_counter() - t0)
                cpus[way].append(time.process_time() - c0)
                if way == "stacked":
                    stacked_paths = paths
                else:
                    single_paths = paths
            print(f"run {r + 1}/{args.repeats}: stacked x{len(stacked_paths)} {walls['stacked'][-1]:6.1f} s wall "
                  f"({cpus['stacked'][-1]:5.1f} s CPU), one at a time x{args.single} {walls['single'][-1]:6.1f} s "
                  f"wall ({cpus['single'][-1]:5.1f} s CPU), load avg {os.getloadavg()[0]:.1f}")
        a, b = Trajectory.load(stacked_paths[0]), Trajectory.load(single_paths[0])
        diff = max(float((a.params[n] - b.params[n]).abs().max()) for n in a.params)
        acc_a, acc_b = a.meta["test_metric"][-1], b.meta["test_metric"][-1]
    # best of the repeats (as timeit does): the run least disturbed by other load on the machine
    stacked = len(stacked_paths) / min(walls["stacked"]) * 3600
    single = args.single / min(walls["single"]) * 3600
    cpu_ratio = (len(stacked_paths) / min(cpus["stacked"])) / (args.single / min(cpus["single"]))
    print(f"stacked x{len(stacked_paths)}: best {min(walls['stacked']):7.1f} s wall -> "
          f"{stacked:8.0f} trajectories/hour")
    print(f"one at a time x{args.single}: best {min(walls['single']):7.1f} s wall -> {single:8.0f} trajectories/hour")
    # each run's pair (adjacent in time, so under the same load): how much the ratio itself moves with the load
    pairs = sorted(len(stacked_paths) / s / (args.single / o) for s, o in zip(walls["stacked"], walls["single"]))
    print(f"ratio stacked / one-at-a-time: {stacked / single:.2f}x wall (best of {args.repeats}), {cpu_ratio:.2f}x "
          f"CPU time (one-at-a-time CPU time includes oneDNN's threads spinning)")
    print(f"ratio per run (each pair adjacent in time): median {statistics.median(pairs):.2f}x, range "
          f"{pairs[0]:.2f}-{pairs[-1]:.2f}x")
    print(f"trial 0 stacked vs alone: max |Δw| {diff:.2e}, smallest-session test acc {acc_a:.4f} vs {acc_b:.4f}")
    out = {"stacked_per_hour": stacked, "single_per_hour": single, "ratio": stacked / single,
           "median_pair_ratio": statistics.median(pairs),
           "cpu_ratio": cpu_ratio, "max_diff": diff, "walls": walls}
    if not args.no_diagnosis:
        d = diagnose(fc, args.group_size, data.shape[0], data.shape[-1])
        print(f"diagnosis, one training step at batch {fc.batch_size} (random data, wall time; convolutions from the "
              f"profiler): alone {d['single_ms']:.2f} ms (convolutions {d['single_conv_ms']:.2f}); per member of a "
              f"x{args.group_size} stack: wide {d['wide_ms']:.2f} ms (convolutions {d['wide_conv_ms']:.2f})"
              + (f", lanes {d['lanes_ms']:.2f} ms" if "lanes_ms" in d else ", lanes unavailable"))
        print(f"ceiling of the wide backend, whose grouped convolutions alone cost "
              f"{d['wide_conv_ms']:.2f} ms per member: {d['wide_ceiling']:.2f}x per step"
              + (f"; lanes step ratio: {d['single_ms'] / d['lanes_ms']:.2f}x" if "lanes_ms" in d else ""))
        out.update(diagnosis=d)
    return out


if __name__ == "__main__":
    main()
