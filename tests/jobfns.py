"""Toy unit functions for the job-layer tests (importable in job processes as tests.jobfns), and a tiny driver.

`python -m tests.jobfns SCENARIO --executor slurm|local|debug --cache DIR` runs one of SCENARIOS through
`know.jobs.Runner` in its own process, so a test can SIGKILL it, and exits 1 with the failure report when units fail.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from know.io import atomic_write_text


def _count(out: Path):
    calls = out.parent.parent / "calls.log"  # <cache>/calls.log, shared by all units of a test
    with open(calls, "a") as f:
        f.write(out.name + "\n")


def add(cfg, out: Path, deps):
    _count(out)
    total = cfg["x"] + sum(json.loads((d / "value.json").read_text()) for d in deps.values())
    (out / "value.json").write_text(json.dumps(total))
    return {"total": total}


def boom(cfg, out: Path, deps):
    _count(out)
    raise ValueError("planned failure")


def sleepy(cfg, out: Path, deps):
    """Sleep cfg["sleep"] seconds; `started` holds the process id while it sleeps."""
    _count(out)
    atomic_write_text(out / "started", json.dumps({"pid": os.getpid(), "time": time.time()}))
    time.sleep(cfg["sleep"])
    return {"slept": cfg["sleep"]}


def waiter(cfg, out: Path, deps):
    """Wait until the test creates <cache>/release (at most cfg["max_s"] seconds)."""
    _count(out)
    atomic_write_text(out / "started", json.dumps({"pid": os.getpid(), "time": time.time()}))
    release, t0 = out.parent.parent / "release", time.time()
    while not release.exists() and time.time() - t0 < cfg["max_s"]:
        time.sleep(0.2)
    return {"released": release.exists()}


def epochs(cfg, out: Path, deps):
    """Train cfg["epochs"] 'epochs' of cfg["epoch_s"] seconds, saving the next epoch after each one (atomically)
    and resuming from it, like the real units. `epochs.log` gets "start E PID" per (re)start and "epoch E" per
    finished epoch."""
    _count(out)
    ckpt, log = out / "ckpt.json", out / "epochs.log"
    start = json.loads(ckpt.read_text())["epoch"] if ckpt.exists() else 0
    _append(log, f"start {start} {os.getpid()}")
    for e in range(start, cfg["epochs"]):
        time.sleep(cfg["epoch_s"])
        atomic_write_text(ckpt, json.dumps({"epoch": e + 1}))
        _append(log, f"epoch {e}")
    return {"starts": read_starts(out)}


def _append(path: Path, line: str):
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


def read_starts(out: Path) -> list[tuple[int, int]]:
    """(first epoch, pid) of each (re)start of an `epochs` unit."""
    log = Path(out) / "epochs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(ln.split()[1]), int(ln.split()[2])) for ln in lines if ln.startswith("start")]


def epochs_done(out: Path) -> list[int]:
    log = Path(out) / "epochs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [int(ln.split()[1]) for ln in lines if ln.startswith("epoch")]


# ---------------------------------------------------------------- scenarios for the fault tests

def scenario(name: str, tag: str = "") -> dict:
    """name -> {unit label: Unit}. `tag` enters every config, so one test's keys never meet another's."""
    from know.jobs import Unit

    def unit(label, fn, **cfg):
        return Unit("toy", f"tests.jobfns:{fn}", {**cfg, "tag": tag, "label": label},
                    label=label)

    if name == "cancel":  # (a): one unit to scancel while it sleeps, one that finishes
        units = [unit("victim", "waiter", max_s=120), unit("bystander", "sleepy", sleep=1)]
    elif name == "crash":  # (b): the driver is killed once "quick" is done and "e1" has saved an epoch
        units = [unit("quick", "sleepy", sleep=0.5), unit("e1", "epochs", epochs=8, epoch_s=1),
                 unit("e2", "epochs", epochs=8, epoch_s=1)]
    elif name == "resume":  # (c): requeued / timed out mid-way, must resume from its last saved epoch
        units = [unit("trainer", "epochs", epochs=12, epoch_s=1)]
    elif name == "timelimit":  # (c) a real 3-minute limit: the warning comes 30-90 s in, 100 s of work cannot finish in one go
        units = [unit("long-trainer", "epochs", epochs=100, epoch_s=1)]
    elif name == "raise":  # (d): one unit raises, its dependent is blocked, the others finish
        bad = unit("the-bad-one", "boom")
        after = Unit("toy", "tests.jobfns:add", {"x": 1, "tag": tag}, deps={"bad": bad}, label="after-bad")
        units = [bad, after, unit("good", "sleepy", sleep=0.2), unit("good2", "sleepy", sleep=0.2)]
    else:
        raise SystemExit(f"unknown scenario '{name}'")
    return {u.label: u for u in units}


def toy_slurm(timeout_min: int = 5):
    from know.config import SlurmCfg

    return SlurmCfg(gpus_per_node=0, cpus_per_task=1, mem_gb=0.5, timeout_min=timeout_min)


# ---------------------------------------------------------------- helpers for the tests

REPO = Path(__file__).resolve().parent.parent


_SLURM_DOWN = False


def slurm_up(wait_s: float = 90.0) -> bool:
    """A Slurm cluster answers here (e.g. the one of scripts/slurm-local.sh) and its node can run jobs.

    Waits, with a bounded retry, for a node that is briefly busy finishing a job (`comp`), still starting, or for a
    slow `sinfo` under load: the cluster counts as down only if no node is usable within `wait_s` seconds."""
    import shutil
    import subprocess

    global _SLURM_DOWN
    if not shutil.which("sbatch") or _SLURM_DOWN:
        return False
    deadline = time.time() + wait_s
    while True:
        try:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            state = ""
        if any(s.strip().rstrip("*~#") in ("idle", "mix", "alloc", "comp") for s in state.split()):
            return True
        if time.time() >= deadline:
            _SLURM_DOWN = True  # waited once in this process: the next test does not wait again
            return False
        time.sleep(2)


SLURM_MISSING = "no Slurm cluster here: start one with 'sudo bash scripts/slurm-local.sh start'"


def wait_until(cond, timeout: float, what: str, every: float = 0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_record(unit_dir: Path) -> dict:
    return json.loads((Path(unit_dir) / "job.json").read_text())


def pid_alive(pid: int) -> bool:
    from know.jobs import _proc_start

    return _proc_start(pid) is not None


def calls(cache: Path) -> list[str]:
    f = Path(cache) / "calls.log"
    return f.read_text().split() if f.exists() else []


class Driver:
    """`python -m tests.jobfns SCENARIO ...` in its own process (output in files: no pipe to fill up)."""

    def __init__(self, scenario_name: str, executor: str, cache: Path, *extra: str):
        import subprocess

        self.cache = Path(cache)
        n = len(list(self.cache.glob("driver*.out"))) if self.cache.exists() else 0
        self.cache.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = self.cache / f"driver{n}.out", self.cache / f"driver{n}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.jobfns", scenario_name, "--executor", executor,
                                          "--cache", str(cache), *extra], cwd=REPO, stdout=out, stderr=err)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        import subprocess

        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"driver still running after {timeout} s:\n{self.out_path.read_text()}"
                                 f"\n{self.err_path.read_text()}") from None
        return rc, self.out_path.read_text(), self.err_path.read_text()

    def kill(self):
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def main(argv=None) -> int:
    from know.jobs import Runner, UnitsFailed

    p = argparse.ArgumentParser(prog="python -m tests.jobfns")
    p.add_argument("scenario")
    p.add_argument("--executor", default="local")
    p.add_argument("--cache", required=True)
    p.add_argument("--tag", default="")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--timeout-min", type=int, default=5)
    args = p.parse_args(argv)
    units = list(scenario(args.scenario, args.tag).values())
    runner = Runner(args.cache, executor=args.executor, parallel=args.parallel, threads=1,
                    slurm=toy_slurm(args.timeout_min), poll_s=0.2, sacct_s=2.0,
                    log=lambda *a: print(*a, flush=True))
    try:
        runner.run(units)
    except UnitsFailed as e:
        print(f"jobfns: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
