"""The one command line of every reproduce script (tables and figures).

`script_main(script, fixed=None)`: options `--profile`, `--executor`, `--results-dir`, `--figures-dir`,
`--cache-dir`, `--data-root`, `--trials`, `--parallel`, `--dry-run`, `--limit-steps`, `--limit-batch`, plus
`--section.field=value` overrides of any field of the experiment config (`know/config.py`; the profiles live in
`know/profiles.py`). `fixed` holds overrides the script itself declares (e.g. one data fraction); the command line
still wins. A `Script` names its units (for `--dry-run`) and its `run(cfg, runner, results_dir, figures_dir)`, which
does the work through cached units and returns the files it wrote.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from know.config import ExperimentCfg, parse_overrides
from know.errors import KnowError
from know.io import require_writable
from know.jobs import Runner, Unit, command_line, git_commit, resolve_executor
from know.plan import render
from know.profiles import choose_profile, make_config

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Script:
    """A reproduce script: its name (the result CSV's stem), its units and how it runs and writes them."""

    name: str
    units: Callable[[ExperimentCfg], list[Unit]]
    run: Callable[[ExperimentCfg, Runner, Path, Path], list[Path]]


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
                   help="default: paper where a GPU can be had (CUDA here or a Slurm partition with GPU gres), "
                        "else cpu")
    p.add_argument("--executor", default="auto", choices=["auto", "slurm", "local", "debug"],
                   help="auto: slurm when sbatch is on PATH, else local processes; debug: in-process")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--figures-dir", default=None, help="default: figures/ beside --results-dir")
    p.add_argument("--cache-dir", default=None, help="unit cache (default: $KNOW_CACHE or runs/cache in the repo)")
    p.add_argument("--data-root", default=None, help="datasets (default: $KNOW_DATA or ~/.cache/know/data)")
    p.add_argument("--trials", type=int, default=None, help="downstream trials per row (default: the profile's)")
    p.add_argument("--parallel", type=int, default=None, help="local executor: concurrent jobs (default: cores)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the units per stage (total / cached / to run), the Slurm "
                        "resources and a compute estimate; run and write nothing")
    p.add_argument("--limit-steps", type=int, default=None,
                   help="rehearsal: at most N optimizer steps per phase and N batches per evaluation (the results "
                        "are meaningless; the point is that every stage runs)")
    p.add_argument("--limit-batch", type=int, default=None, help="rehearsal: cap every batch size at B")
    return p


def script_main(script: Script, fixed: dict | None = None, argv: list[str] | None = None) -> int:
    """Parse the command line, build the config and the runner, run the script; KnowError -> one line, exit 1."""
    name = script.name
    args, extra = build_parser(name).parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = {**(fixed or {}), **parse_overrides(extra)}
        for key in ("data_root", "trials", "limit_steps", "limit_batch"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        profile, why = (args.profile, "--profile") if args.profile else choose_profile()
        cfg = make_config(profile, overrides, table=name)
        executor = resolve_executor(args.executor)
        cache = Path(args.cache_dir) if args.cache_dir else default_cache()
        print(f"[{name}] profile={cfg.profile} ({why}) executor={executor} trials={cfg.trials}", flush=True)
        if args.dry_run:
            print(render(name, cfg, script.units(cfg), cache, executor))
            return 0
        results_dir = Path(args.results_dir)
        require_writable(results_dir, "results directory", "pass --results-dir DIR")
        figures_dir = Path(args.figures_dir) if args.figures_dir else results_dir.parent / "figures"
        runner = Runner(cache, executor=executor, parallel=args.parallel or (os.cpu_count() or 1), slurm=cfg.slurm)
        for path in script.run(cfg, runner, results_dir, figures_dir):
            print(f"wrote {path}")
    except KnowError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    return 0
