"""The one command line of every reproduce script (tables and figures).

`script_main(name, run, fixed=None)`: options `--profile`, `--executor`, `--results-dir`, `--figures-dir`,
`--cache-dir`, `--data-root`, `--trials`, `--parallel`, plus `--section.field=value` overrides of any field of the
experiment config (`know/config.py`; the profiles live in `know/profiles.py`). `fixed` holds overrides the script itself declares
(e.g. one data fraction); the command line still wins. `run(cfg, runner, results_dir, figures_dir)` does the work
through cached units and returns the files it wrote.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from know.config import ExperimentCfg, parse_overrides
from know.errors import KnowError
from know.jobs import Runner, command_line, git_commit, resolve_executor
from know.io import require_writable
from know.profiles import default_profile, make_config

REPO = Path(__file__).resolve().parent.parent


def default_cache() -> Path:
    return Path(os.environ.get("KNOW_CACHE", str(REPO / "runs" / "cache")))


def provenance(name: str, cfg: ExperimentCfg, runner, t0: float, **extra) -> dict:
    """The sidecar `.meta.json` of a result CSV: what ran, where, from which commit, how long."""
    return {"table": name, "profile": cfg.profile, "command": command_line(), "commit": git_commit(),
            "executor": runner.executor, "wall_s": round(time.time() - t0, 1), "rate": cfg.forget.rate,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": asdict(cfg), **extra}


def build_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"reproduce/{name}.py", description=f"Reproduce {name}: every unit is a cached submitit job.",
        epilog="Any config field can be overridden as --section.field=value, e.g. --forget.lr=3e-4 "
               "--transfer.finetune_epochs=20 --slurm.partition=gpu (see know/profiles.py for the profiles).")
    p.add_argument("--profile", choices=["smoke", "cpu", "paper"], default=None,
                   help="default: paper where a GPU or Slurm is present, else cpu")
    p.add_argument("--executor", default="auto", choices=["auto", "slurm", "local", "debug"],
                   help="auto: slurm when sbatch is on PATH, else local processes; debug: in-process")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--figures-dir", default=None, help="default: figures/ beside --results-dir")
    p.add_argument("--cache-dir", default=None, help="unit cache (default: $KNOW_CACHE or runs/cache in the repo)")
    p.add_argument("--data-root", default=None, help="datasets (default: $KNOW_DATA or ~/.cache/know/data)")
    p.add_argument("--trials", type=int, default=None, help="downstream trials per row (default: the profile's)")
    p.add_argument("--parallel", type=int, default=None, help="local executor: concurrent jobs (default: cores)")
    return p


def script_main(name: str, run: Callable, fixed: dict | None = None, argv: list[str] | None = None) -> int:
    """Parse the command line, build the config and the runner, call `run`; KnowError -> one line, exit 1."""
    args, extra = build_parser(name).parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = {**(fixed or {}), **parse_overrides(extra)}
        for key in ("data_root", "trials"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        cfg = make_config(args.profile or default_profile(), overrides)
        executor = resolve_executor(args.executor)
        print(f"[{name}] profile={cfg.profile} executor={executor} trials={cfg.trials} "
              f"fractions={list(cfg.fractions)}", flush=True)
        results_dir = Path(args.results_dir)
        require_writable(results_dir, "results directory", "pass --results-dir DIR")
        figures_dir = Path(args.figures_dir) if args.figures_dir else results_dir.parent / "figures"
        runner = Runner(Path(args.cache_dir) if args.cache_dir else default_cache(), executor=executor,
                        parallel=args.parallel or (os.cpu_count() or 1), slurm=cfg.slurm)
        for path in run(cfg, runner, results_dir, figures_dir):
            print(f"wrote {path}")
    except KnowError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    return 0
