"""`know` command line: thin dispatch to the `main(argv)` of each library module.

Each subcommand lives in the module that owns its concern; this file only lists them, so `know --help` shows the
whole tool.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from know.errors import KnowError

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("know.data", "main", "list datasets, check what is available offline, show shapes"),
    "models": ("know.models", "main", "list registered models and their parameter counts"),
    "forget": ("know.forgetting", "main", "pre-train and collect a forgetting trajectory Θ0..Θ(S-1)"),
    "collect": ("know.forgetting", "collect_main", "collect a meta-dataset of many trajectories (job array)"),
    "meta-train": ("know.metatrain", "main", "meta-train KNOWN (conv / fc / bias) on trajectories"),
    "predict": ("know.predict", "main", "KNOW-predict weights (x2, x4, x8) from a trajectory"),
    "transfer": ("know.transfer", "main", "two-phase transfer learning from a checkpoint"),
    "figures": ("know.plots", "main", "regenerate every figure from cached result CSVs (no compute)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="know",
        description="KNOW prediction: forgetting trajectories, the KNOWN hyper-model, prediction and transfer.",
        epilog="Run 'know <command> --help' for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, (_, _, help_) in COMMANDS.items():
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
    module, func, _ = COMMANDS[name]
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except KnowError as e:
        print(f"know {name}: error: {e}", file=sys.stderr)
        return 2
