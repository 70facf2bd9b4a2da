"""The job layer on a real Slurm cluster (scripts/slurm-local.sh): job arrays, resources from the config and the
command line, accounting, and reproduce/table1.py on the cluster. Skipped without a cluster, failed under CI."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from know.config import SlurmCfg
from know.profiles import make_config
from know.jobs import Runner, Unit, load_result, slurm_parameters
from tests.conftest import require
from tests.jobfns import SLURM_MISSING, calls, job_record, slurm_up, wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def slurm():
    require(slurm_up(), SLURM_MISSING)


def sacct(job: str, fields: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-X", "--parsable2", "-j", job, "-o", fields], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return [ln.split("|") for ln in out.splitlines() if ln]


def test_slurm_parameters_from_config_and_command_line(tmp_path):
    """Every SlurmCfg field reaches sbatch; `--slurm.key=value` overrides (as reproduce scripts accept them)."""
    import submitit

    paper = slurm_parameters(make_config("paper").slurm)  # defaults for one GPU job of the paper profile
    assert paper["gpus_per_node"] == 1 and paper["cpus_per_task"] >= 4 and paper["timeout_min"] >= 60
    cfg = make_config("smoke", ["slurm.partition=gpu", "slurm.account=proj", "slurm.qos=high",
                                "slurm.constraint=a100", "slurm.gpus_per_node=2", "slurm.timeout_min=90",
                                "slurm.array_parallelism=8", "slurm.mem_gb=16", "slurm.cpus_per_task=4"])
    ex = submitit.AutoExecutor(tmp_path, cluster="slurm")
    ex.update_parameters(**slurm_parameters(cfg.slurm))
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--constraint=a100", "--gpus-per-node=2",
                 "--time=90", "--mem=16GB", "--cpus-per-task=4", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    assert ex._executor.parameters["array_parallelism"] == 8
    with pytest.raises(Exception, match="slurm.gpus"):
        make_config("smoke", ["slurm.gpus=2"])  # unknown keys are rejected with the known ones


def test_wave_is_one_job_array_with_the_configured_resources(tmp_path, slurm):
    wave = [Unit("w", "tests.jobfns:add", {"x": i}, label=f"w{i}") for i in range(3)]
    last = Unit("z", "tests.jobfns:add", {"x": 100}, deps={f"w{i}": u for i, u in enumerate(wave)}, label="z")
    cfg = SlurmCfg(partition="debug", gpus_per_node=0, cpus_per_task=1, mem_gb=0.5, timeout_min=7,
                   array_parallelism=2)
    runner = Runner(tmp_path, executor="slurm", slurm=cfg, threads=1, poll_s=0.2, sacct_s=2, log=lambda *_: None)
    res = runner.run([last])
    assert res[last.key]["value"] == {"total": 100 + 0 + 1 + 2}
    ids = [job_record(u.dir(tmp_path))["job_id"] for u in wave]
    base = {i.split("_")[0] for i in ids}
    assert len(base) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1", "2"]  # one array
    assert "_" not in job_record(last.dir(tmp_path))["job_id"]  # a wave of one: a plain job
    job = base.pop()
    # accounting lags the controller by a few seconds
    def completed():  # all three tasks, not the first one accounting happens to show
        rows = [r for r in sacct(job, "JobID,State,Partition,Timelimit,ReqMem,AllocCPUS")
                if r[1] == "COMPLETED" and r[3]]
        return rows if len(rows) == 3 else None

    rows = wait_until(completed, 30, "accounting of the array")
    assert len(rows) == 3 and all(r[1] == "COMPLETED" and r[2] == "debug" and r[3] == "00:07:00" and
                                  r[4] == "512M" and r[5] == "1" for r in rows), rows
    scripts = [p.read_text() for p in Path(runner.logs).rglob("*_submission.sh")]
    assert any("#SBATCH --array=0-2%2\n" in s for s in scripts)  # array parallelism
    assert sorted(calls(tmp_path)) == sorted(u.dir(tmp_path).name for u in [*wave, last])


def test_rerun_on_slurm_skips_finished_units(tmp_path, slurm):
    u = Unit("a", "tests.jobfns:add", {"x": 5}, label="a")
    runner = Runner(tmp_path, executor="slurm", slurm=SlurmCfg(gpus_per_node=0, cpus_per_task=1, mem_gb=0.5,
                                                                timeout_min=5), poll_s=0.2, log=lambda *_: None)
    runner.run([u])
    runner.run([u])
    assert len(calls(tmp_path)) == 1 and load_result(u.dir(tmp_path))["value"] == {"total": 5}


def test_table1_smoke_runs_on_slurm(tmp_path, slurm, known_weights, wnn_weights):
    """reproduce/table1.py --executor slurm end to end on the cluster (one fraction and one trial, to keep the
    test near a minute; the full smoke grid is the same code with more units)."""
    env = dict(os.environ, KNOW_OFFLINE="1")  # the weight fixtures exported both weight folders
    results = tmp_path / "results"
    cmd = [sys.executable, "reproduce/table1.py", "--profile", "smoke", "--executor", "slurm", "--results-dir",
           str(results), "--cache-dir", str(tmp_path / "cache"), "--trials", "1", "--fractions=[1.0]"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (results / "table1_smoke.csv").is_file() and "executor=slurm" in p.stdout
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and ", 0 to run" in rerun.stdout  # everything cached


def test_local_cluster_script_start_is_idempotent_and_status_reports(slurm):
    state = Path(os.environ.get("KNOW_SLURM_STATE", "/var/lib/know-slurm"))
    if not (state / "slurmctld.pid").is_file():
        pytest.skip("the cluster here was not started by scripts/slurm-local.sh")
    script = str(REPO / "scripts" / "slurm-local.sh")
    start = subprocess.run(["bash", script, "start"], capture_output=True, text=True, timeout=60)
    assert start.returncode == 0 and "already running" in start.stdout, start.stdout + start.stderr
    status = subprocess.run(["bash", script, "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    for daemon in ("mysqld", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon}: running (pid " in status.stdout
    assert any(f"node localhost: {s}" in status.stdout for s in ("idle", "mix", "alloc", "comp"))
