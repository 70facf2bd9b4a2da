"""Units of work, their cache, and running them through submitit (Slurm, local processes, or in-process debug).

A `Unit` is one piece of an experiment (a pre-training, a trajectory, a meta-training, a prediction, one fine-tune
run). It is identified by a hash of its stage, its config, the keys of the units it depends on and the source code of
the modules it runs, and it owns the folder `<cache>/<stage>/<key>/`. Its function writes outputs there; the wrapper
then writes `result.json` and, last, the `done` marker (both atomically), so a rerun skips finished units, recomputes
units whose config or code changed, and never trusts a half-written folder.

`Runner.run(units)` submits every unit whose dependencies are done, as one job array per wave on Slurm or throttled
to `parallel` processes locally, shows jobs done / running / failed, and reports failures with their log paths.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from know.errors import KnowError

ROOT = Path(__file__).resolve().parent


# ---------------------------------------------------------------- atomic files

def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path) -> None:
    """torch.save through a temp file + rename."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- units

@functools.lru_cache(maxsize=None)
def code_hash(modules: tuple[str, ...]) -> str:
    """Hash of the source of `modules` (e.g. "know.forgetting"); a package name hashes all its files."""
    h = hashlib.sha256()
    for mod in sorted(modules):
        path = ROOT.parent.joinpath(*mod.split("."))
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for f in files:
            h.update(f.relative_to(ROOT.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


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
    code: tuple[str, ...] = ()  # modules whose source enters the key
    label: str = ""  # short human name for progress and errors

    @functools.cached_property
    def key(self) -> str:
        blob = json.dumps({"stage": self.stage, "fn": self.fn, "cfg": _jsonable(self.cfg),
                           "deps": {k: d.key for k, d in sorted(self.deps.items())},
                           "code": code_hash(self.code)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def dir(self, cache: Path) -> Path:
        return Path(cache) / self.stage / self.key

    def name(self) -> str:
        return self.label or f"{self.stage}/{self.key}"


def load_result(folder: Path) -> dict | None:
    """The unit's result if it finished and its record is intact, else None (then it is recomputed)."""
    done, result = folder / "done", folder / "result.json"
    if not done.is_file() or not result.is_file():
        return None
    try:
        record = json.loads(result.read_text())
        if done.read_text().strip() != hashlib.sha256(result.read_bytes()).hexdigest():
            return None  # a result that does not match its marker is not trusted
        return record
    except (OSError, ValueError):
        return None


def execute(stage: str, fn: str, cfg: dict, out_dir: str, dep_dirs: dict[str, str], threads: int | None) -> dict:
    """Job entry point (runs inside the submitit job). Never raises for a unit's own error: returns it."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        module, func = fn.split(":")
        value = getattr(importlib.import_module(module), func)(cfg, out, {k: Path(v) for k, v in dep_dirs.items()})
        record = {"ok": True, "stage": stage, "value": _jsonable(value), "wall_s": round(time.time() - t0, 3)}
    except Exception as e:  # the driver reports it with the log path; other units go on
        return {"ok": False, "stage": stage, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    text = json.dumps(record, indent=1)
    atomic_write_text(out / "result.json", text)
    atomic_write_text(out / "done", hashlib.sha256(text.encode()).hexdigest())
    return record


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
    slurm: Any = None  # know.config.SlurmCfg
    poll_s: float = 1.0
    log: Any = print

    def __post_init__(self):
        self.cache = Path(self.cache)
        self.executor = resolve_executor(self.executor)
        self.logs = self.cache / "_submitit" / time.strftime("%Y%m%d-%H%M%S")  # fresh folder per run

    # -- public
    def run(self, units: list[Unit]) -> dict[str, dict]:
        """Run `units` (dependencies included automatically); returns {key: result}. Raises UnitsFailed at the end
        if any unit failed, after every unit that could run has run."""
        units = _closure(units)
        results, failed, running = {}, {}, {}
        for u in units:
            r = load_result(u.dir(self.cache))
            if r is not None:
                results[u.key] = r
        cached = len(results)
        self.log(f"[jobs] {len(units)} units: {cached} cached, {len(units) - cached} to run "
                 f"(executor={self.executor}, cache={self.cache})")
        pending = [u for u in units if u.key not in results]
        last_status = None
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
        ex = submitit.AutoExecutor(folder, cluster="slurm")
        params = dict(timeout_min=s.timeout_min, cpus_per_task=s.cpus_per_task, mem_gb=s.mem_gb,
                      slurm_array_parallelism=s.array_parallelism)
        if s.gpus_per_node:
            params["gpus_per_node"] = s.gpus_per_node
        for k in ("partition", "account", "qos", "constraint"):
            if getattr(s, k):
                params[f"slurm_{k}"] = getattr(s, k)
        ex.update_parameters(**params)
        return ex

    def _threads(self) -> int | None:
        if self.threads:
            return self.threads
        if self.executor == "slurm":
            return self.slurm.cpus_per_task if self.slurm else None
        return max(1, (os.cpu_count() or 1) // max(1, self.parallel))

    def _submit(self, units: list[Unit]) -> list:
        ex = self._executor()
        args = [(u.stage, u.fn, _jsonable(u.cfg), str(u.dir(self.cache)),
                 {k: str(d.dir(self.cache)) for k, d in u.deps.items()}, self._threads()) for u in units]
        if self.executor == "slurm" and len(units) > 1:
            return ex.map_array(execute, *zip(*args))  # one job array per wave
        return [ex.submit(execute, *a) for a in args]

    def _collect(self, running: dict, results: dict, failed: dict) -> None:
        for key, (u, job) in list(running.items()):
            if self.executor != "debug" and not job.done():
                continue
            del running[key]
            log = _log_path(job)
            try:
                record = job.result()
            except Exception as e:  # the job itself died: cancelled, killed, timed out, node failure
                failed[key] = {"error": f"job {job.job_id} did not complete ({type(e).__name__}: "
                                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})",
                               "unit": u, "log": log}
                continue
            if record.get("ok"):
                results[key] = record
            else:
                failed[key] = {"error": record.get("error", "unknown error"), "unit": u, "log": log}
                tb = record.get("traceback")
                if tb:
                    self.log(f"[jobs] {u.name()} failed:\n{tb}")


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


def git_commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT.parent, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT.parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]])
