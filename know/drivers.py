"""The command line of the reproduce scripts that are not transfer tables (T-G, the figures).

`script_main(name, run, section)` gives them the options of `know.experiment.table_main` (profile, executor, folders,
`--key=value` overrides of the experiment config) plus overrides of the script's own config section, e.g.
`--landscape.grid=9` or `--cost.repeats=5`. The section is a dataclass whose defaults are the paper's settings; its
per-profile overrides sit next to it in `SECTION_PROFILES` form ({profile: {"section.field": value}}), the same
dotted form as `know.config.PROFILES`, so they can move there unchanged. `run(cfg, section_cfg, runner, results_dir,
figures_dir)` does the work through cached units and returns the files it wrote.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from know.config import ExperimentCfg, apply_overrides, default_profile, make_config, parse_overrides
from know.errors import KnowError

REPO = Path(__file__).resolve().parent.parent


def section_config(cls: type, name: str, profiles: dict[str, dict[str, Any]], profile: str,
                   overrides: dict[str, Any]) -> Any:
    """`cls()` with the profile's `name.*` overrides, then the user's (keys without the `name.` prefix)."""
    cfg = cls()
    for source in (profiles.get(profile, {}), overrides):
        apply_overrides(cfg, {k.removeprefix(f"{name}."): v for k, v in source.items() if k.startswith(f"{name}.")})
    return cfg


def split_overrides(overrides: dict[str, Any], section: str | None) -> tuple[dict, dict]:
    """(experiment overrides, section overrides)."""
    if section is None:
        return overrides, {}
    mine = {k: v for k, v in overrides.items() if k.startswith(f"{section}.")}
    return {k: v for k, v in overrides.items() if k not in mine}, mine


def provenance(name: str, cfg: ExperimentCfg, runner, t0: float, **extra) -> dict:
    """The sidecar `.meta.json` of a result CSV: what ran, where, from which commit, how long."""
    from know.jobs import command_line, git_commit

    return {"table": name, "profile": cfg.profile, "command": command_line(), "commit": git_commit(),
            "executor": runner.executor, "wall_s": round(time.time() - t0, 1), "rate": cfg.forget.rate,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": asdict(cfg), **extra}


def _parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"reproduce/{name}.py", description=f"Reproduce {name}: every unit is a cached submitit job.",
        epilog="Any config field can be overridden as --section.field=value, e.g. --forget.lr=3e-4 "
               "(see know/config.py and the script's own section).")
    p.add_argument("--profile", choices=["smoke", "cpu", "paper"], default=None,
                   help="default: paper where a GPU or Slurm is present, else cpu")
    p.add_argument("--executor", default="auto", choices=["auto", "slurm", "local", "debug"],
                   help="auto: slurm when sbatch is on PATH, else local processes; debug: in-process")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--figures-dir", default=None, help="default: figures/ beside --results-dir")
    p.add_argument("--cache-dir", default=None, help="unit cache (default: $KNOW_CACHE or runs/cache in the repo)")
    p.add_argument("--data-root", default=None, help="datasets (default: $KNOW_DATA or ~/.cache/know/data)")
    p.add_argument("--parallel", type=int, default=None, help="local executor: concurrent jobs (default: cores)")
    p.add_argument("--trials", type=int, default=None, help="accepted for reproduce/all.sh (the transfer tables')")
    return p


def script_main(name: str, run: Callable, section: tuple[str, type, dict] | None = None,
                argv: list[str] | None = None) -> int:
    """Command line of a reproduce script; `section` = (prefix, dataclass, its per-profile overrides)."""
    from know.experiment import _check_writable, _default_cache
    from know.jobs import Runner, resolve_executor

    args, extra = _parser(name).parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        exp_over, own_over = split_overrides(parse_overrides(extra), section[0] if section else None)
        for key in ("data_root", "trials"):
            if getattr(args, key) is not None:
                exp_over[key] = getattr(args, key)
        cfg = make_config(args.profile or default_profile(), exp_over)
        own = section_config(section[1], section[0], section[2], cfg.profile, own_over) if section else None
        executor = resolve_executor(args.executor)
        print(f"[{name}] profile={cfg.profile} executor={executor}", flush=True)
        results_dir = Path(args.results_dir)
        _check_writable(results_dir)
        figures_dir = Path(args.figures_dir) if args.figures_dir else results_dir.parent / "figures"
        runner = Runner(Path(args.cache_dir or _default_cache()), executor=executor,
                        parallel=args.parallel or (os.cpu_count() or 1), slurm=cfg.slurm)
        for path in run(cfg, own, runner, results_dir, figures_dir):
            print(f"wrote {path}")
    except KnowError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    return 0
