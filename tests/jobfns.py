"""Toy unit functions for the job-layer tests (importable in job processes as tests.jobfns)."""
import json
from pathlib import Path


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
