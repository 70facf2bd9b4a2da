"""Speed of one KNOW prediction step over a ResNet-18-sized trajectory (issue 3, part 6).

Builds a synthetic 5-session trajectory with the parameter shapes of `resnet18_know` (11.2 M scalars; group-(a)
drift of known_vectors: x0 ~ N(0, .05), per-scalar mu ~ N(0, .002), steps N(mu, .002)), times
`know.predict.predict(..., steps=1)` with the official KNOWN models routed as in the official script, and compares
every predicted value with the plain layer-by-layer float32 KNOWN (`KNOWN.forward`) on the same input.
Also times all 3 steps, and the same on CUDA when present. The last stdout line is JSON.

    python benchmarks/predict_speed.py [--threads 2] [--repeats 3] [--ref-fraction 1.0] [--no-cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

KERAS_NS_PER_PARAM_STEP = 2050  # official Keras KNOWN on a 2-core machine of this kind (23.0 s per step; issue 3)
MATMUL_N = 2048


def matmul_gflops(device: str, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 GEMM throughput (TF32 off) of an N x N matmul."""
    a = torch.randn(MATMUL_N, MATMUL_N, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * MATMUL_N ** 3 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resnet18_shapes() -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, kind) of resnet18_know's parameters (100 classes); a flat fallback without know.models."""
    from know.trajectory import param_kinds
    try:
        from know.models import create_model
        model = create_model("resnet18_know", num_classes=100)
    except Exception:  # the model registry is optional for this benchmark
        return {"flat": ((11_232_612,), "conv")}
    kinds = param_kinds(model)
    return {n: (tuple(p.shape), kinds[n]) for n, p in model.named_parameters()}


def synthetic_trajectory(sessions: int, seed: int, device: str):
    """Group-(a)-like drift for every scalar of a ResNet-18 (float32, oldest first)."""
    from know.trajectory import Trajectory
    g = torch.Generator().manual_seed(seed)
    params, kinds = {}, {}
    for name, (shape, kind) in resnet18_shapes().items():
        n = int(torch.tensor(shape).prod())
        x0 = torch.randn(n, generator=g, dtype=torch.float64) * 0.05
        mu = torch.randn(n, generator=g, dtype=torch.float64) * 0.002
        steps = mu + torch.randn(sessions - 1, n, generator=g, dtype=torch.float64) * 0.002
        traj = torch.cat([x0[None], x0 + steps.cumsum(0)]).float()  # (S, n)
        params[name], kinds[name] = traj.reshape(sessions, *shape).to(device), kind
    return Trajectory(params=params, kinds=kinds, meta={"synthetic": "group-a drift", "seed": seed})


@torch.no_grad()
def reference_step(traj, routing: str, fraction: float, device: str) -> dict[str, torch.Tensor]:
    """Θ(-1) with the plain float32 KNOWN graph (first `fraction` of each parameter's scalars)."""
    from know.known import load_official
    from know.predict import route
    models, out = {}, {}
    for name, p in traj.params.items():
        kind = route(traj.kinds[name], p.shape[1:], routing)
        if kind is None:
            continue
        model = models.setdefault(kind, load_official(kind).to(device))
        x = p.reshape(p.shape[0], -1)[:, :max(1, int(fraction * p[0].numel()))].T  # (n, 5)
        chunks = [x[i:i + 65536] for i in range(0, x.shape[0], 65536)]
        out[name] = torch.cat([c[:, -1] + model(c, c[:, 1:] - c[:, :-1])[:, 0] for c in chunks])
    return out


def time_predict(traj, steps: int, repeats: int, device: str, backend: str):
    from know.predict import KnownPredictor, predict
    pred = KnownPredictor("official", backend=backend)
    predict(traj, pred, steps=1)  # warm-up: loads weights, builds the kernel, first-touch memory
    best, cpu, outs = float("inf"), float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        outs = predict(traj, pred, steps=steps)
        _sync(device)
        best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return best, cpu, outs


def run_device(device: str, args) -> dict:
    from know.fastknown import load_kernel
    traj = synthetic_trajectory(5, args.seed, device)
    params = traj.num_params
    t1, cpu1, outs = time_predict(traj, 1, args.repeats, device, args.backend)
    t3, _, _ = time_predict(traj, 3, max(1, args.repeats // 2), device, args.backend)
    ref = reference_step(traj, "official", args.ref_fraction, device)
    err = max(float((outs[0][n].reshape(-1)[:r.numel()] - r).abs().max()) for n, r in ref.items())
    ns = t1 / params * 1e9
    backend = "c" if device == "cpu" and load_kernel() is not None and args.backend != "torch" else "torch"
    return {"ns_per_param_step": round(ns, 2), "params": params, "device": device,
            "threads": torch.get_num_threads() if device == "cpu" else None, "backend": backend,
            "seconds_per_step": round(t1, 4), "seconds_3_steps": round(t3, 4),
            # CPU seconds of all threads per param: wall ≈ this / threads on an otherwise idle machine
            "cpu_ns_per_param_step": round(cpu1 / params * 1e9, 2) if device == "cpu" else None,
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "max_abs_err_vs_fp32": err, "ref_fraction": args.ref_fraction,
            "matmul_gflops": round(matmul_gflops(device), 1),
            "keras_reference_ns_per_param_step": KERAS_NS_PER_PARAM_STEP,
            "speedup_vs_keras": round(KERAS_NS_PER_PARAM_STEP / ns, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the reference machine has 2 cores)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--ref-fraction", type=float, default=1.0, help="share of each parameter checked vs fp32")
    p.add_argument("--backend", default="auto", choices=["auto", "c", "torch"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cuda", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("KNOW_WEIGHTS_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                           "reference", "known_keras"))
    torch.set_num_threads(args.threads)
    result = run_device("cpu", args)
    print(f"cpu: {result['ns_per_param_step']} ns/param/step, err {result['max_abs_err_vs_fp32']:.2e}, "
          f"matmul {result['matmul_gflops']} GFLOP/s", flush=True)
    if torch.cuda.is_available() and not args.no_cuda:
        result["cuda"] = run_device("cuda", args)
        print(f"cuda: {result['cuda']['ns_per_param_step']} ns/param/step, 3 steps "
              f"{result['cuda']['seconds_3_steps']} s", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
