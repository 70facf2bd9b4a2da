"""Result rows -> CSV with provenance -> grouped mean ± std -> text tables beside the paper's numbers.

Rows are self-describing (method, steps, fraction, trial, seed, accuracy, commit, profile); provenance of the whole
run (command, executor, config, seeds, wall time) goes to a sidecar `<csv>.meta.json`. Aggregation and rendering are
pure functions of the CSV, so figures and reports regenerate from cache without computing.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd

from know.io import atomic_write_text

DISPLAY = {"naive": "Naive", "taskvector": "TaskVector", "logfit": "LogFit", "tsv": "TSV",
           "known_official": "KNOWN (official)", "known_ours": "KNOWN (ours)", "wnn": "WNN",
           **{f"known_ours_s{s}": f"KNOWN (ours, S={s})" for s in (2, 3, 4)}}


def row_label(method: str, steps: int, rate: float = 0.5) -> str:
    """'KNOWN (official) ×8' for 3 steps at r = 0.5; 'Naive' for 0 steps."""
    name = DISPLAY.get(method, method)
    if not steps:
        return name
    mult = (1 / rate) ** steps
    return f"{name} ×{mult:g}"


def write_results(rows: list[dict], csv_path: Path, provenance: dict) -> Path:
    """Atomically write the rows and the provenance sidecar (`<name>.meta.json`)."""
    csv_path = Path(csv_path)
    df = pd.DataFrame(rows)
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(meta_path(csv_path), json.dumps(provenance, indent=1, default=str))
    return csv_path


def meta_path(csv_path: Path) -> Path:
    return Path(csv_path).with_suffix(".meta.json")


def read_results(csv_path: Path) -> tuple[pd.DataFrame, dict]:
    csv_path = Path(csv_path)
    meta = json.loads(meta_path(csv_path).read_text()) if meta_path(csv_path).exists() else {}
    return pd.read_csv(csv_path), meta


def summarize(df: pd.DataFrame, value: str = "score") -> pd.DataFrame:
    """Mean, std (ddof=1) and count of `value` (in %) per (method, steps, fraction), in row order of appearance."""
    order = list(dict.fromkeys(zip(df["method"], df["steps"])))
    g = df.groupby(["method", "steps", "fraction"], sort=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out[["mean", "std"]] *= 100
    out["order"] = [order.index((m, s)) for m, s in zip(out["method"], out["steps"])]
    return out.sort_values(["order", "fraction"], ascending=[True, False]).drop(columns="order")


def read_paper(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#", dtype=str)


def _fmt(mean, std, count=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "?"
    s = f"{mean:.2f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f"±{std:.2f}"
    return s


def side_by_side(summary: pd.DataFrame, paper: pd.DataFrame | None, rate: float = 0.5) -> str:
    """A text table: one line per row (method × steps), for each fraction 'ours | paper'."""
    fractions = sorted(summary["fraction"].unique(), reverse=True)
    head = ["row"] + [f"{f:.0%} ours | paper" for f in fractions]
    lines = []
    for (method, steps), grp in summary.groupby(["method", "steps"], sort=False):
        cells = [row_label(method, int(steps), rate)]
        for f in fractions:
            r = grp[grp["fraction"] == f]
            ours = _fmt(*r[["mean", "std"]].iloc[0]) if len(r) else "-"
            cells.append(f"{ours} | {paper_cell(paper, method, steps, f)}")
        lines.append(cells)
    widths = [max(len(str(c[i])) for c in [head] + lines) for i in range(len(head))]
    buf = io.StringIO()
    for cells in [head] + lines:
        buf.write("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() + "\n")
    return buf.getvalue()


def paper_cell(paper: pd.DataFrame | None, method: str, steps: int, fraction: float) -> str:
    if paper is None:
        return "?"
    match = paper[(paper["method"] == method) & (paper["fraction"].astype(float) == float(fraction))]
    exact = match[match["steps"] == str(int(steps))]
    r = exact if len(exact) else match[match["steps"] == "?"]
    if not len(r) or r["mean"].iloc[0] == "?":
        return "?"
    std = r["std"].iloc[0]
    return r["mean"].iloc[0] + ("" if std == "?" else f"±{std}")
