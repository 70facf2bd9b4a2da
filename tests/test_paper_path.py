"""The paper path before anyone spends GPU hours: every script's profiles resolve, --dry-run plans without running or
writing, the profile follows the resources, and a submission Slurm refuses is one clear line."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from know import profiles
from know.drivers import Script, script_main
from tests.conftest import require
from tests.jobfns import SLURM_MISSING, slurm_up

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (REPO / "reproduce").glob("*.py") if p.stem != "report")


def _script(name: str):
    """The reproduce script's module (its ROWS and what it runs), imported without running it."""
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", REPO / "reproduce" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dry_run(name: str, profile: str, tmp_path: Path, capsys, *extra) -> str:
    argv = ["--profile", profile, "--dry-run", "--executor", "local", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache"), *extra]
    mod = _script(name)
    if hasattr(mod, "ROWS"):
        from know.tables import table_main
        rc = table_main(name, mod.ROWS, argv=argv, fixed=getattr(mod, "FIXED", None))
    else:
        script = next(v for v in vars(mod).values() if isinstance(v, Script))
        rc = script_main(script, argv=argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_profile_of_every_script_resolves_and_plans(name, profile, tmp_path, capsys):
    """A mistyped key in any profile of any table fails here, not on a cluster; the dry run writes nothing."""
    out = _dry_run(name, profile, tmp_path, capsys)
    assert f"profile={profile}" in out and "units per stage" in out and "to run" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_dry_run_of_the_paper_table1_shows_config_units_and_compute(tmp_path, capsys):
    out = _dry_run("table1", "paper", tmp_path, capsys, "--forget.lr=3e-4")
    assert "forget.lr = 0.0003   (default 0.001)" in out and "forget.dataset" not in out  # a diff of changes
    assert re.search(r"transfer\s+195\s+0\s+195", out)  # 13 row-steps x 3 fractions x 5 trials
    assert "PFLOP" in out and "unmeasured" in out


def test_profile_follows_the_resources(monkeypatch):
    monkeypatch.setattr(profiles, "_slurm_gpu_partitions", lambda: [])
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profile, why = profiles.choose_profile()
    assert profile == "cpu" and "no CUDA device" in why
    monkeypatch.setattr(profiles, "_slurm_gpu_partitions", lambda: ["gpu"])
    assert profiles.choose_profile() == ("paper", "Slurm partition(s) with GPU gres: gpu")


def test_local_slurm_without_gpus_picks_cpu():
    require(slurm_up(), SLURM_MISSING)
    assert profiles._slurm_gpu_partitions() == [] and profiles.choose_profile()[0] == "cpu"


def test_slurm_refusal_is_one_line_naming_the_option(tmp_path):
    require(slurm_up(), SLURM_MISSING)
    cmd = [sys.executable, "reproduce/table1.py", "--profile", "smoke", "--executor", "slurm", "--trials", "1",
           "--fractions=[1.0]", "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
           "--slurm.gpus_per_node=1"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    error = [ln for ln in p.stderr.splitlines() if ln.startswith("table1: error:")]
    assert len(error) == 1 and "Slurm refused" in error[0] and "--slurm.gpus_per_node" in error[0]
