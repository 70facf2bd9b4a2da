"""Units of work, their cache, and running them through submitit (Slurm, local processes, or in-process debug).

A `Unit` is one piece of an experiment (a pre-training, a trajectory, a meta-training, a prediction, one fine-tune
run). It is identified by a hash of its stage, its config, the keys of the units it depends on and the source code of
the modules it runs, and it owns the folder `<cache>/<stage>/<key>/`. Its function writes outputs there; the wrapper
then writes `result.json` and, last, the `done` marker (both atomically), so a rerun skips finished units, recomputes
units whose config or code changed, and never trusts a half-written folder.

`Runner.run(units)` submits every unit whose dependencies are done, as one job array per wave on Slurm or throttled
to `parallel` processes locally, shows jobs done / running / failed, and reports failures with their log paths.

Faults (each has a test on a real Slurm cluster, tests/test_faults.py):
- A job killed from outside (scancel, out of memory, node failure) is reported with its Slurm state and log path;
  the run ends with UnitsFailed after the other units finished, and a rerun recomputes only the unfinished units.
- Time limit or preemption: the job callable is checkpointable (`UnitJob.checkpoint`), so submitit requeues the same
  unit on Slurm's warning signal; `scontrol requeue` restarts it too. Unit functions resume from the per-epoch
  checkpoints they keep in their folder, so a requeued unit continues from its last saved epoch.
- The driver killed: Slurm jobs outlive it. Every submission is recorded in `<unit>/job.json`; a rerun re-attaches
  to the recorded jobs that are still pending or running instead of submitting them again. Local jobs are the
  driver's children and stop within a second of its death (a watchdog thread), then resume on the rerun.
- Never twice at once: a job holds an exclusive lock on `<unit>/.lock` while it runs the unit and, once it has the
  lock, returns the finished result if another job completed the unit meanwhile.
- Never half-written: outputs go through temp file + rename (`atomic_write_text`, `atomic_save`); `result.json`
  lists every output file with its size and `done` holds the sha256 of `result.json`. A missing, truncated or
  mismatched record, or an output whose size changed, makes the unit run again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib
import json
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from know import datasets
from know.codehash import code_hash
from know.config import SlurmCfg
from know.errors import KnowError
from know.io import atomic_write_text, require_writable

ROOT = Path(__file__).resolve().parent


# ---------------------------------------------------------------- units

def _dataset_names(obj) -> set[str]:
    """Every dataset a config names: the values of its "dataset" and "datasets" keys, at any depth."""
    found = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "dataset" and isinstance(v, str):
                found.add(v)
            elif k == "datasets" and isinstance(v, (list, tuple)):
                found.update(x for x in v if isinstance(x, str))
            else:
                found |= _dataset_names(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found |= _dataset_names(v)
    return found


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@dataclass
class Unit:
    """One cached job: `fn(cfg, out_dir, deps)` where deps maps names to finished dependency folders."""

    stage: str  # e.g. "pretrain", "forget", "predict", "transfer"
    fn: str  # "module:function", imported in the job process
    cfg: dict[str, Any]  # JSON-able; everything that identifies the unit's result
    deps: dict[str, "Unit"] = field(default_factory=dict)
    label: str = ""  # short human name for progress and errors

    @functools.cached_property
    def key(self) -> str:
        """Hash of the stage, function, config, dependencies' keys and the code the function runs (`know.codehash`:
        found from its imports, never listed)."""
        blob = json.dumps({"stage": self.stage, "fn": self.fn, "cfg": _jsonable(self.cfg),
                           "deps": {k: d.key for k, d in sorted(self.deps.items())},
                           "code": [code_hash(m) for m in self.modules()]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def modules(self) -> list[str]:
        """What the unit runs: its function's module, and the loaders of the datasets its config names (they are
        imported by name when a set is loaded, so no import statement reaches them)."""
        names = sorted(_dataset_names(self.cfg))
        return [self.fn.split(":")[0]] + sorted({datasets.loader_module(n) for n in names
                                                if n in datasets.DATASETS})

    def dir(self, cache: Path) -> Path:
        return Path(cache) / self.stage / self.key

    def name(self) -> str:
        return self.label or f"{self.stage}/{self.key}"


BOOKKEEPING = ("done", "result.json", ".lock", "job.json")  # a unit folder's files that are not its outputs


def output_files(folder: Path) -> dict[str, int]:
    """{relative path: size} of a unit's outputs (temp files of interrupted atomic writes left out)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in BOOKKEEPING and not p.name.endswith(".tmp")}


def load_result(folder: Path) -> dict | None:
    """The unit's result if it finished and its record is intact, else None (then it is recomputed): `done` must
    hold the sha256 of `result.json`, and every output file listed there must still have its recorded size."""
    folder = Path(folder)
    done, result = folder / "done", folder / "result.json"
    if not done.is_file() or not result.is_file():
        return None
    try:
        text = result.read_bytes()
        if done.read_text().strip() != hashlib.sha256(text).hexdigest():
            return None  # a result that does not match its marker is not trusted
        record = json.loads(text)
        for name, size in record.get("files", {}).items():
            if (folder / name).stat().st_size != size:
                return None  # an output was truncated or replaced after the unit finished
        return record
    except (OSError, ValueError, AttributeError):
        return None


def execute(stage: str, fn: str, cfg: dict, out_dir: str, dep_dirs: dict[str, str], threads: int | None) -> dict:
    """Job entry point (runs inside the submitit job). Never raises for a unit's own error: returns it."""
    _watch_driver()
    _set_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits while another job runs this unit (released when it dies)
        except OSError as e:  # a file system without locks (some NFS mounts): run unguarded
            print(f"[jobs] warning: cannot lock {out / '.lock'} ({e.strerror}); running without the guard against "
                  f"a second job on this unit", file=sys.stderr)
        finished = load_result(out)
        if finished is not None:  # another job completed it meanwhile (e.g. one submitted before a driver crash)
            return finished
        t0 = time.time()
        try:
            module, func = fn.split(":")
            value = getattr(importlib.import_module(module), func)(cfg, out, {k: Path(v) for k, v in dep_dirs.items()})
            record = {"ok": True, "stage": stage, "value": _jsonable(value), "wall_s": round(time.time() - t0, 3)}
        except Exception as e:  # the driver reports it with the log path; other units go on
            if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
                traceback.print_exc()  # into the job's log, which the driver's report points at
            return {"ok": False, "stage": stage, "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()}
        record["files"] = output_files(out)
        text = json.dumps(record, indent=1)
        atomic_write_text(out / "result.json", text)
        atomic_write_text(out / "done", hashlib.sha256(text.encode()).hexdigest())
        return record


class UnitJob:
    """The callable submitted for each unit. It is checkpointable: on Slurm's time-limit or preemption signal
    submitit calls `checkpoint`, which resubmits the same unit; the unit function then resumes from the per-epoch
    checkpoints in its folder (the pattern of dino's `run_with_submitit.py`)."""

    requeued = False  # set in the job process once submitit has asked for the requeue

    def __call__(self, *args):
        try:
            record = execute(*args)
        except Exception:
            if UnitJob.requeued:
                sys.exit(-1)
            raise
        if UnitJob.requeued and not record.get("ok") and not record.get("error", "").startswith("UncompletedJobError"):
            # The signal handler's `scontrol requeue` interrupted the unit (and is often killed by the very requeue
            # it asked for, raising CalledProcessError in the unit's code): exit without a result; the requeued job
            # runs the unit again. UncompletedJobError ("timed out too many times") is a real end: report it.
            sys.exit(-1)
        return record

    def checkpoint(self, *args):
        import submitit

        UnitJob.requeued = True
        return submitit.helpers.DelayedSubmission(UnitJob(), *args)


def _set_threads(threads: int | None) -> None:
    """Torch threads per job, without importing torch for units that do not use it."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


DRIVER_ENV = "KNOW_DRIVER"  # "<pid>:<start time>" of the driver that owns local jobs


def _proc_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), None if it is gone or a zombie: a pid plus this never
    repeats."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _watch_driver() -> None:
    """In a local job: exit within a second once the driver that started it is gone (a SIGKILLed driver cannot
    stop its jobs), so that its rerun never runs a unit next to an orphan. Slurm jobs are left alone."""
    owner = os.environ.get(DRIVER_ENV)
    if not owner or os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return
    pid, start = owner.split(":")

    def watch():
        while _proc_start(int(pid)) == start:
            time.sleep(1)
        print(f"[jobs] driver {pid} is gone; stopping this local job (a rerun resumes it)", file=sys.stderr,
              flush=True)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="know-driver-watch").start()


# ---------------------------------------------------------------- running

class UnitsFailed(KnowError):
    pass


def resolve_executor(name: str) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if name not in ("slurm", "local", "debug"):
        raise KnowError(f"unknown executor '{name}'; known: auto, slurm, local, debug")
    return name


@dataclass
class Runner:
    cache: Path  # unit folders
    executor: str = "auto"  # auto | slurm | local | debug
    parallel: int = 1  # local: concurrent processes
    threads: int | None = None  # torch threads per job (None: cores / parallel locally, cpus_per_task on Slurm)
    slurm: SlurmCfg | None = None
    poll_s: float = 0.5  # seconds between checks: a freed local slot waits at most this long
    log: Any = print
    sacct_s: float = 15.0  # Slurm: ask sacct about running jobs at least this often (a cancelled job is seen then)

    def __post_init__(self):
        self.cache = Path(self.cache)
        self.executor = resolve_executor(self.executor)
        # a fresh folder per run (Slurm job ids restart when a cluster is re-installed)
        self.logs = self.cache / "_submitit" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._last_sacct = 0.0

    # -- public
    def run(self, units: list[Unit]) -> dict[str, dict]:
        """Run `units` (dependencies included automatically); returns {key: result}. Raises UnitsFailed at the end
        if any unit failed, after every unit that could run has run."""
        units = _closure(units)
        require_writable(self.cache, "cache folder", "choose another (--cache-dir or $KNOW_CACHE)")
        results, failed, running = {}, {}, {}
        for u in units:
            r = load_result(u.dir(self.cache))
            if r is not None:
                results[u.key] = r
        cached = len(results)
        pending = [u for u in units if u.key not in results]
        running.update(self._reattach(pending))
        pending = [u for u in pending if u.key not in running]
        self.log(f"[jobs] {len(units)} units: {cached} cached, {len(units) - cached} to run"
                 + (f" ({len(running)} still running from an earlier run: re-attached)" if running else "")
                 + f" (executor={self.executor}, cache={self.cache})")
        last_status = None
        try:
            while pending or running:
                blocked = [u for u in pending if any(d.key in failed for d in u.deps.values())]
                for u in blocked:
                    failed[u.key] = {"error": "a dependency failed", "unit": u}
                    pending.remove(u)
                ready = [u for u in pending if all(d.key in results for d in u.deps.values())]
                slots = len(ready) if self.executor == "slurm" else max(0, self.parallel - len(running))
                if ready[:slots]:
                    for u, job in zip(ready[:slots], self._submit(ready[:slots])):
                        running[u.key] = (u, job)
                        pending.remove(u)
                self._collect(running, results, failed)
                status = (len(results) - cached, len(running), len(failed), len(pending))
                if status != last_status:
                    self.log(f"[jobs] done {status[0]} (+{cached} cached) | running {status[1]} | failed {status[2]} "
                             f"| pending {status[3]}")
                    last_status = status
                if running and self.executor != "debug":  # debug jobs run in-process at result()
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            if self.executor == "slurm" and running:
                ids = " ".join(sorted({str(job.job_id).split("_")[0] for _, job in running.values()}))
                self.log(f"[jobs] interrupted: {len(running)} Slurm job(s) keep running; rerun the same command to "
                         f"re-attach to them, or cancel them with: scancel {ids}")
            raise
        if failed:
            lines = [f"{len(failed)} unit(s) failed:"]
            for rec in failed.values():
                lines.append(f"  {rec['unit'].name()}: {rec['error']}" + (f"  (log: {rec['log']})" if rec.get("log") else ""))
            raise UnitsFailed("\n".join(lines))
        return results

    # -- internals
    def _executor(self):
        import submitit

        folder = self.logs / "%j"
        if self.executor == "debug":
            return submitit.DebugExecutor(folder)
        if self.executor == "local":
            ex = submitit.LocalExecutor(folder)
            ex.update_parameters(timeout_min=24 * 60)
            return ex
        s = self.slurm
        if s is None:
            s = self.slurm = SlurmCfg()
        ex = submitit.AutoExecutor(folder, cluster="slurm")
        ex.update_parameters(**slurm_parameters(s), name=self._job_name())
        return ex

    def _job_name(self) -> str:
        return f"know-{self.logs.name}"

    def _threads(self) -> int | None:
        if self.threads:
            return self.threads
        if self.executor == "slurm":
            return self.slurm.cpus_per_task if self.slurm else None
        return max(1, (os.cpu_count() or 1) // max(1, self.parallel))

    def _submit(self, units: list[Unit]) -> list:
        try:
            return self._submit_jobs(units)
        except Exception as e:
            if self.executor != "slurm" or "sbatch" not in str(e):
                raise
            raise KnowError(slurm_refusal(str(e))) from None

    def _submit_jobs(self, units: list[Unit]) -> list:
        ex = self._executor()
        args = [(u.stage, u.fn, _jsonable(u.cfg), str(u.dir(self.cache)),
                 {k: str(d.dir(self.cache)) for k, d in u.deps.items()}, self._threads()) for u in units]
        if self.executor == "slurm" and len(units) > 1:
            jobs = ex.map_array(UnitJob(), *zip(*args))  # one job array per wave
        else:
            with _driver_env(self.executor == "local"):
                jobs = [ex.submit(UnitJob(), *a) for a in args]
        for u, job in zip(units, jobs):  # what a rerun after a driver crash re-attaches to
            atomic_write_text(u.dir(self.cache) / JOB_RECORD, json.dumps(
                {"executor": self.executor, "job_id": str(job.job_id), "folder": str(self.logs / "%j"),
                 "name": self._job_name(), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
        return jobs

    def _reattach(self, units: list[Unit]) -> dict:
        """{key: (unit, job)} for unfinished units whose recorded Slurm job is still pending or running."""
        if self.executor != "slurm":
            return {}
        records = {}
        for u in units:
            try:
                rec = json.loads((u.dir(self.cache) / JOB_RECORD).read_text())
            except (OSError, ValueError):
                continue
            if rec.get("executor") == "slurm" and rec.get("job_id"):
                records[u.key] = (u, rec)
        if not records:
            return {}
        live = queued_jobs({rec["name"] for _, rec in records.values()})
        import submitit

        # the name check guards against a job id that a re-installed cluster gave to another job
        return {key: (u, submitit.SlurmJob(folder=rec["folder"], job_id=rec["job_id"]))
                for key, (u, rec) in records.items() if live.get(rec["job_id"]) == rec["name"]}

    def _refresh_slurm(self, running: dict) -> None:
        """Force a sacct call every sacct_s: submitit alone may wait up to 10 minutes to notice a cancelled job."""
        if self.executor != "slurm" or not running or time.time() - self._last_sacct < self.sacct_s:
            return
        import submitit

        submitit.SlurmJob.watcher.update()
        self._last_sacct = time.time()

    def _collect(self, running: dict, results: dict, failed: dict) -> None:
        self._refresh_slurm(running)
        for key, (u, job) in list(running.items()):
            if self.executor != "debug" and not job.done():
                continue
            del running[key]
            log = _log_path(job)
            try:
                if self.executor == "local" or _state(job).startswith("CANCELLED"):
                    job._results_timeout_s = 2  # no result can still come: don't wait submitit's 15 s for it
                record = job.result()
            except Exception as e:  # the job itself died: cancelled, killed, timed out, node failure
                failed[key] = {"error": _job_failure(job, e), "unit": u, "log": log}
                continue
            if record.get("ok"):
                results[key] = record
            else:
                failed[key] = {"error": record.get("error", "unknown error"), "unit": u, "log": log}
                tb = record.get("traceback")
                if tb:
                    self.log(f"[jobs] {u.name()} failed:\n{tb}")


JOB_RECORD = "job.json"  # in a unit's folder: the last job submitted for it

# what an sbatch refusal says -> the option that sets it
_REFUSALS = (("gres", "--slurm.gpus_per_node (a cluster without GPUs: --slurm.gpus_per_node=0, or --profile cpu)"),
             ("partition", "--slurm.partition"), ("account", "--slurm.account"), ("qos", "--slurm.qos"),
             ("time limit", "--slurm.timeout_min"), ("feature", "--slurm.constraint"),
             ("constraint", "--slurm.constraint"), ("memory", "--slurm.mem_gb"), ("cpu", "--slurm.cpus_per_task"))


def slurm_refusal(text: str) -> str:
    """One line for a submission Slurm refused: its own words and the --slurm.* option to change."""
    said = next((ln.strip() for ln in text.splitlines() if "sbatch: error" in ln), text.strip().splitlines()[-1])
    said = said[said.index("sbatch: error"):] if "sbatch: error" in said else said
    option = next((opt for key, opt in _REFUSALS if key in said.lower()), "the --slurm.* options")
    return f"Slurm refused the job array ({said}); change {option}"


def slurm_parameters(s: SlurmCfg) -> dict:
    """submitit parameters from a `SlurmCfg`."""
    params = dict(timeout_min=s.timeout_min, cpus_per_task=s.cpus_per_task, mem_gb=s.mem_gb,
                  slurm_array_parallelism=s.array_parallelism,
                  # the warning signal before the time limit (submitit then checkpoints and requeues): 90 s, or
                  # 3/4 of a short limit, since slurmctld checks limits only every 30 s
                  slurm_signal_delay_s=int(min(90, s.timeout_min * 45)))
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(s, k):
            params[f"slurm_{k}"] = getattr(s, k)
    return params


def queued_jobs(names: set[str]) -> dict[str, str]:
    """{job id: job name} of the jobs with these names that Slurm still holds (pending, running, requeued...),
    array tasks one by one as "123_4". From squeue, the controller's live view: accounting (sacct) can lag seconds
    behind a submission. {} if squeue fails."""
    import subprocess

    cmd = ["squeue", "-h", "-r", "-o", "%i|%j", f"--name={','.join(sorted(names))}"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("|", 1) for line in text.splitlines() if "|" in line)


def _state(job) -> str:
    try:
        return str(job.state)
    except Exception:
        return "UNKNOWN"


def _job_failure(job, e: Exception) -> str:
    """One line on why a job ended without a unit result."""
    from submitit.core.utils import UncompletedJobError

    if isinstance(e, UncompletedJobError):
        if type(job).__name__ == "SlurmJob":
            return (f"Slurm job {job.job_id} stopped before the unit finished (state {_state(job)}: cancelled, out of "
                    f"time or memory, or its node failed); a rerun recomputes this unit")
        return (f"job {job.job_id} stopped before the unit finished (its process was killed); a rerun recomputes "
                f"this unit")
    lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("---")]
    trace = [ln for ln in lines if not ln.startswith((" ", "Job (task", "You can check", "or at paths"))]
    return f"job {job.job_id} failed outside the unit: {trace[-1] if trace else type(e).__name__}"


@contextlib.contextmanager
def _driver_env(on: bool):
    """Within the block, local jobs inherit DRIVER_ENV and so stop when this process dies."""
    before = os.environ.get(DRIVER_ENV)
    if on:
        os.environ[DRIVER_ENV] = f"{os.getpid()}:{_proc_start(os.getpid())}"
    try:
        yield
    finally:
        if on and before is None:
            os.environ.pop(DRIVER_ENV, None)
        elif on:
            os.environ[DRIVER_ENV] = before


def _log_path(job) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:
        return ""


def _closure(units: list[Unit]) -> list[Unit]:
    """All units and their dependencies, each once, dependencies first."""
    order, seen = [], set()

    def visit(u: Unit):
        if u.key in seen:
            return
        for d in u.deps.values():
            visit(d)
        seen.add(u.key)
        order.append(u)

    for u in units:
        visit(u)
    return order


# Outputs of the reproduce scripts: a run rewriting its own tracked results does not make the code "dirty".
OUTPUT_DIRS = ("results", "figures")


def git_commit(repo: Path | None = None) -> str:
    """Short commit of the code, '-dirty' when a tracked file outside OUTPUT_DIRS differs from it."""
    import subprocess

    repo = repo or ROOT.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *[f":!{d}" for d in OUTPUT_DIRS]], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]])
