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
