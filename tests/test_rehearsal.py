"""The full-size rehearsal of the paper path: every reproduce script's `paper` profile with the real models at their
real sizes and the real dataset loaders on small files in the datasets' real formats, through every stage, capped to
a few steps per phase (benchmarks/rehearse.py says which caps). This is the test that fails when the paper path
breaks. One shared unit cache, as in a real run; the debug executor here, the local Slurm for one script."""
import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import require
from tests.jobfns import SLURM_MISSING, slurm_up

REPO = Path(__file__).resolve().parent.parent


def _rehearse_module():
    spec = importlib.util.spec_from_file_location("rehearse", REPO / "benchmarks" / "rehearse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = _rehearse_module()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return R.write_data(tmp_path_factory.mktemp("paper-data"))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """Removed afterwards: full-size checkpoints take gigabytes, and pytest keeps its last three temporary trees."""
    path = tmp_path_factory.mktemp("rehearsal")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_every_script_rehearses_its_paper_profile(data, out, known_weights, wnn_weights):
    """All ten scripts in two parallel chains of one thread each (the CI machine's two cores)."""
    results = R.rehearse_in_lanes(list(R.SCRIPTS), data, out, lanes=2)
    failed = {s: res.stdout[-1500:] + res.stderr[-2500:] for s, (res, _) in results.items() if res.returncode}
    assert not failed, "\n\n".join(f"== {s}\n{text}" for s, text in failed.items())
    for script, (res, seconds) in results.items():
        print(f"rehearsal {script}: {seconds:.0f} s")
        assert f"[{script}] profile=paper" in res.stdout
        csv = out / "results" / f"{script}_paper.csv"
        assert csv.is_file() and len(pd.read_csv(csv)) > 0


def test_paper_profile_rehearsal_on_slurm(data, tmp_path, known_weights, wnn_weights):
    """The same path as Slurm job arrays (no GPU gres on the local cluster: --slurm-cpu)."""
    require(slurm_up(), SLURM_MISSING)
    try:
        res = R.rehearse("table_cost", data, tmp_path, executor="slurm", slurm_cpu=True)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "executor=slurm" in res.stdout and (tmp_path / "results" / "table_cost_paper.csv").is_file()
    finally:
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
