"""`know` command line: thin dispatch to the `main(argv)` of each library module.

Each subcommand lives in the module that owns its concern; this file only lists them, so `know --help` shows the
whole tool and a subcommand whose module is not there yet says which issue brings it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from know.errors import KnowError

# name -> (module, function, one-line help, issue that brings it)
COMMANDS: dict[str, tuple[str, str, str, int]] = {
    "data": ("know.data", "main", "list datasets, check what is available offline, show shapes", 2),
    "models": ("know.models", "main", "list registered models and their parameter counts", 2),
    "forget": ("know.forgetting", "main", "pre-train and collect a forgetting trajectory Θ0..Θ(S-1)", 4),
    "collect": ("know.forgetting", "collect_main", "collect a meta-dataset of many trajectories (job array)", 4),
    "meta-train": ("know.metatrain", "main", "meta-train KNOWN (conv / fc / bias) on trajectories", 3),
    "predict": ("know.predict", "main", "KNOW-predict weights (x2, x4, x8) from a trajectory", 3),
    "transfer": ("know.transfer", "main", "two-phase transfer learning from a checkpoint", 4),
    "figures": ("know.plots", "main", "regenerate every figure from cached result CSVs (no compute)", 4),
}


class CommandUnavailable(RuntimeError):
    pass


def _resolve(name: str):
    module, func, _, issue = COMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise CommandUnavailable(f"'know {name}' is not implemented yet: issue #{issue} brings it") from None
    if not hasattr(mod, func):
        raise CommandUnavailable(f"'know {name}' is not implemented yet: issue #{issue} brings it")
    return getattr(mod, func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="know",
        description="KNOW prediction: forgetting trajectories, the KNOWN hyper-model, prediction and transfer.",
        epilog="Run 'know <command> --help' for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, (_, _, help_, _) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command '{name}'; known: {', '.join(COMMANDS)}")
    try:
        return int(_resolve(name)(rest) or 0)
    except CommandUnavailable as e:
        print(f"know: {e}", file=sys.stderr)
        return 2
    except KnowError as e:
        print(f"know {name}: error: {e}", file=sys.stderr)
        return 2

