"""The benchmark scripts run end to end (tiny sizes; their numbers are only meaningful at the default sizes)."""
import importlib.util
from pathlib import Path


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_speed_runs_and_compares_stacked_with_one_at_a_time():
    out = _load("collect_speed").main(["--dataset", "debug", "--images", "48", "--sessions", "2", "--group-size",
                                       "3", "--single", "1", "--repeats", "2", "--eval-images", "8",
                                       "--no-diagnosis"])
    assert out["ratio"] > 0 and len(out["walls"]["stacked"]) == 2 and len(out["walls"]["single"]) == 2
    assert out["max_diff"] < 1e-3  # trial 0 stacked equals trial 0 alone, to float rounding


def test_gpu_check_runs_on_a_cpu_and_says_why_it_skips():
    import json
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--skip-rehearsal"],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = {d["check"]: d for d in map(json.loads, res.stdout.splitlines())}
    assert lines["known_prediction"]["params"] > 11_000_000 and lines["known_prediction"]["seconds"] > 0
    assert lines["known_prediction"]["max_abs_diff_vs_cpu"] <= 2e-6
    if "cuda" not in lines["device"]["device"]:
        assert "needs CUDA" in lines["train_throughput"]["skipped"] and "needs CUDA" in lines["step_times"]["skipped"]
