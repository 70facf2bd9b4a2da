"""Faults, on a real Slurm cluster (scripts/slurm-local.sh) and, where they make sense, on local processes.

Each test drives toy units (tests/jobfns.py: sleeps and 1-second 'epochs' that checkpoint a counter) through
`know.jobs.Runner` in a separate driver process, injects the fault from outside, and checks the report, the exit
status and what a rerun recomputes. Slurm cases skip without a cluster, and fail under CI (conftest.require).
"""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from know.io import atomic_save, atomic_write_text
from know.jobs import Runner, Unit, load_result
from tests.conftest import require
from tests.jobfns import (SLURM_MISSING, Driver, calls, epochs_done, job_record, pid_alive, read_starts, scenario,
                          slurm_up, wait_until)

EXECUTORS = ["local", "slurm"]


def need(executor):
    if executor == "slurm":
        require(slurm_up(), SLURM_MISSING)


def dirs(name, cache):
    return {label: u.dir(cache) for label, u in scenario(name).items()}


def failure_line(err: str, label: str) -> str:
    return next(ln for ln in err.splitlines() if ln.strip().startswith(f"{label}:"))


# ---------------------------------------------------------------- (a) a job cancelled mid-run

@pytest.mark.parametrize("executor", EXECUTORS)
def test_cancelled_job_is_reported_and_rerun_recomputes_only_it(tmp_path, executor):
    need(executor)
    d = dirs("cancel", tmp_path)
    driver = Driver("cancel", executor, tmp_path)
    wait_until(lambda: (d["victim"] / "started").exists(), 90, "the victim to start")
    pid = json.loads((d["victim"] / "started").read_text())["pid"]
    if executor == "slurm":
        subprocess.run(["scancel", job_record(d["victim"])["job_id"]], check=True)
    else:  # the local analogue: the unit's process is killed
        os.kill(pid, signal.SIGKILL)
    rc, out, err = driver.wait(90)
    assert rc == 1, out + err
    line = failure_line(err, "victim")
    assert "stopped before the unit finished" in line and "a rerun recomputes this unit" in line
    if executor == "slurm":
        assert "state CANCELLED" in line
    assert Path(re.search(r"\(log: (\S+)\)", line).group(1)).is_file()
    assert load_result(d["victim"]) is None and load_result(d["bystander"])  # the other unit finished

    wait_until(lambda: not pid_alive(pid), 30, "the cancelled job's process to end (Slurm's KillWait)")
    (tmp_path / "release").touch()  # the victim may finish this time
    rc, out, err = Driver("cancel", executor, tmp_path).wait(90)
    assert rc == 0, out + err
    assert "1 cached, 1 to run" in out
    assert calls(tmp_path).count(d["victim"].name) == 2 and calls(tmp_path).count(d["bystander"].name) == 1


# ---------------------------------------------------------------- (b) the driver SIGKILLed while jobs run

@pytest.mark.parametrize("executor", EXECUTORS)
def test_driver_killed_rerun_picks_up_without_duplicates(tmp_path, executor):
    need(executor)
    d = dirs("crash", tmp_path)
    driver = Driver("crash", executor, tmp_path)
    wait_until(lambda: load_result(d["quick"]) and epochs_done(d["e1"]), 90, "'quick' done and an epoch of 'e1'")
    submitted = {k: job_record(v)["job_id"] for k, v in d.items() if (v / "job.json").exists()}
    driver.kill()
    first_pid = read_starts(d["e1"])[0][1]
    if executor == "local":  # the driver's local jobs stop with it: nothing runs beside the rerun
        wait_until(lambda: not pid_alive(first_pid), 10, "the orphaned local job to stop")

    rc, out, err = Driver("crash", executor, tmp_path).wait(120)
    assert rc == 0, out + err
    assert calls(tmp_path).count(d["quick"].name) == 1  # finished before the kill: never run again
    e1 = read_starts(d["e1"])
    if executor == "slurm":  # the jobs outlived the driver; the rerun waited for them instead of resubmitting
        assert "re-attached" in out
        assert set(submitted) == {"quick", "e1", "e2"}  # one array, all three submitted by the first driver
        assert {k: job_record(v)["job_id"] for k, v in d.items()} == submitted  # none submitted again
        assert len(e1) == 1 and len(read_starts(d["e2"])) == 1
        assert sorted(calls(tmp_path)) == sorted(v.name for v in d.values())
    else:  # the killed unit resumed from its saved epoch, after its first process was gone
        assert len(e1) == 2 and e1[1][0] >= 1 and e1[1][1] != first_pid
    assert sorted(epochs_done(d["e1"])) == list(range(8))  # every epoch exactly once
    assert all(load_result(v) for v in d.values())


# ---------------------------------------------------------------- (c) requeued / timed out: resume, not restart

def _check_resumed(unit_dir: Path, epochs: int, restarts: int = 1):
    starts = read_starts(unit_dir)
    assert len(starts) >= 1 + restarts, starts
    firsts = [s for s, _ in starts]
    # A restart never goes back, and one resumed from a checkpoint. Equal starts are legitimate: an attempt can be
    # stopped before its first epoch (Slurm may send the warning signal up to 60 s early, by its event resolution).
    assert firsts[0] == 0 and all(b >= a for a, b in zip(firsts, firsts[1:])) and firsts[-1] > 0, starts
    done = epochs_done(unit_dir)
    assert len(done) == len(set(done)) and set(range(firsts[-1], epochs)) <= set(done)  # no epoch twice
    assert load_result(unit_dir)["value"]["starts"] == [list(s) for s in starts]


def test_slurm_requeue_resumes_from_last_epoch(tmp_path):
    """Preemption without warning: `scontrol requeue` kills the job and Slurm starts it again."""
    need("slurm")
    unit_dir = dirs("resume", tmp_path)["trainer"]
    driver = Driver("resume", "slurm", tmp_path)
    wait_until(lambda: len(epochs_done(unit_dir)) >= 3, 60, "3 epochs")
    subprocess.run(["scontrol", "requeue", job_record(unit_dir)["job_id"]], check=True)
    rc, out, err = driver.wait(120)
    assert rc == 0, out + err
    _check_resumed(unit_dir, 12)
    assert read_starts(unit_dir)[1][0] >= 3


def test_slurm_time_limit_checkpoints_requeues_and_resumes(tmp_path):
    """A real 3-minute limit: Slurm's warning signal makes submitit call UnitJob.checkpoint and requeue the job;
    100 s of work cannot finish in one go, so it must resume at least once (2-3 minutes). The signal is due 90 s
    before the limit but may come up to 60 s earlier. With a 1-minute limit (signal due 45 s before it) it came
    within a second of the job's start, before submitit had installed its handler, and USR2 killed the job (seen in
    CI and locally): the limit must leave the job time to start."""
    need("slurm")
    unit_dir = dirs("timelimit", tmp_path)["long-trainer"]
    rc, out, err = Driver("timelimit", "slurm", tmp_path, "--timeout-min", "3").wait(480)
    assert rc == 0, out + err
    _check_resumed(unit_dir, 100)
    log = Path(re.sub(r"%j", job_record(unit_dir)["job_id"], job_record(unit_dir)["folder"]))
    assert "Calling checkpoint method" in "".join(p.read_text() for p in log.glob("*_log.out"))


def test_local_preemption_signal_checkpoints_and_resumes(tmp_path):
    """The local executor's analogue: the timeout/preemption signal (USR2) checkpoints, requeues, resumes."""
    unit_dir = dirs("resume", tmp_path)["trainer"]
    driver = Driver("resume", "local", tmp_path)
    wait_until(lambda: len(epochs_done(unit_dir)) >= 3, 60, "3 epochs")
    os.kill(read_starts(unit_dir)[0][1], signal.SIGUSR2)
    rc, out, err = driver.wait(60)
    assert rc == 0, out + err
    _check_resumed(unit_dir, 12)


# ---------------------------------------------------------------- (d) a unit that raises

@pytest.mark.parametrize("executor", ["debug", *EXECUTORS])
def test_unit_that_raises_others_finish_exit_nonzero(tmp_path, executor):
    need(executor)
    d = dirs("raise", tmp_path)
    rc, out, err = Driver("raise", executor, tmp_path).wait(90)
    assert rc == 1
    line = failure_line(err, "the-bad-one")
    assert "ValueError: planned failure" in line
    assert "after-bad: a dependency failed" in err
    assert load_result(d["good"]) and load_result(d["good2"]) and not load_result(d["the-bad-one"])
    log = Path(re.search(r"\(log: (\S+)\)", line).group(1))
    if executor != "debug":  # the job's own log holds the traceback
        assert "planned failure" in log.read_text()


# ---------------------------------------------------------------- the cache never trusts a damaged entry

def _unit(tmp_path, x=1):
    return Unit("a", "tests.jobfns:add", {"x": x}, label="a")


@pytest.mark.parametrize("damage", ["truncated result", "marker of another result", "no marker",
                                    "truncated output", "missing output"])
def test_damaged_cache_entry_is_recomputed(tmp_path, damage):
    u = _unit(tmp_path)
    runner = Runner(tmp_path, executor="debug", log=lambda *_: None)
    runner.run([u])
    folder = u.dir(tmp_path)
    assert load_result(folder)["files"] == {"value.json": 1}
    if damage == "truncated result":
        (folder / "result.json").write_text((folder / "result.json").read_text()[:20])
    elif damage == "marker of another result":
        (folder / "done").write_text("0" * 64)
    elif damage == "no marker":
        (folder / "done").unlink()
    elif damage == "truncated output":
        (folder / "value.json").write_text("")
    else:
        (folder / "value.json").unlink()
    assert load_result(folder) is None
    assert runner.run([u])[u.key]["value"] == {"total": 1}
    assert load_result(folder) is not None and len(calls(tmp_path)) == 2


def test_leftover_temp_files_are_ignored(tmp_path):
    u = _unit(tmp_path)
    runner = Runner(tmp_path, executor="debug", log=lambda *_: None)
    folder = u.dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / ".theta0.pt.abc123.tmp").write_bytes(b"half")  # a write killed before its rename
    runner.run([u])
    assert ".theta0.pt.abc123.tmp" not in load_result(folder)["files"]


def test_second_job_on_a_finished_unit_returns_its_result(tmp_path):
    """A duplicate job (e.g. submitted just before a driver crash) finds the unit done and does not recompute."""
    from know.jobs import execute

    u = _unit(tmp_path)
    Runner(tmp_path, executor="debug", log=lambda *_: None).run([u])
    record = execute(u.stage, u.fn, u.cfg, str(u.dir(tmp_path)), {}, 1)
    assert record["value"] == {"total": 1} and len(calls(tmp_path)) == 1


# ---------------------------------------------------------------- nothing half-written

WRITER = """
import json, sys
from know.io import atomic_write_text
for i in range(10**6):
    atomic_write_text(sys.argv[1], json.dumps({"i": i, "pad": "x" * 4_000_000}))
"""


def test_killed_writer_never_leaves_a_truncated_file(tmp_path):
    target = tmp_path / "result.json"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=Path(__file__).parent.parent)
    wait_until(target.exists, 30, "the first write")
    for _ in range(3):  # kill at some point of a later write
        wait_until(lambda: json.loads(target.read_text())["i"] >= 0, 5, "a complete file")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(json.loads(target.read_text())["pad"]) == 4_000_000  # the last complete version


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    import torch

    from know.trajectory import Trajectory

    path = tmp_path / "theta0.pt"
    atomic_save({"w": torch.ones(3)}, path)

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["theta0.pt"]  # no temp file left

    traj = Trajectory.from_sessions([{"w": torch.ones(2) * (k + 1)} for k in range(3)])  # Θ0 = ones
    tpath = traj.save(tmp_path / "t.safetensors")
    import safetensors.torch

    def broken_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x08\x00")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_file)
    with pytest.raises(OSError):
        Trajectory.from_sessions([{"w": torch.zeros(2)} for _ in range(3)]).save(tpath)
    assert torch.equal(Trajectory.load(tpath).theta(0)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors", "theta0.pt"]


def test_results_and_metrics_are_written_atomically(tmp_path):
    from know.metatrain import _write_csv
    from know.results import write_results

    csv = write_results([{"method": "naive", "score": 0.5}], tmp_path / "t.csv", {"profile": "x"})
    assert csv.read_text().startswith("method,score") and (tmp_path / "t.meta.json").is_file()
    metrics = tmp_path / "metrics.csv"
    _write_csv(metrics, [{"epoch": 0, "kind": "conv"}, {"epoch": 1, "kind": "conv"}])
    _write_csv(metrics, [{"epoch": 2, "kind": "conv"}])
    _write_csv(metrics, [], keep_until=1)  # a resumed run drops the epochs after its checkpoint
    assert [ln.split(",")[0] for ln in metrics.read_text().splitlines()] == ["epoch", "0", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "t.csv", "t.meta.json"]


def test_atomic_write_text_creates_folder(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"
