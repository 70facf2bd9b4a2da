"""Result rows -> CSV with provenance -> summaries and paired statistics -> text tables beside the paper's numbers.

Rows are self-describing: one per fine-tune run (method, steps, column, fraction, trial, seed, metric, score = the
reported epoch's metric, final = the last epoch's, commit, profile); provenance of the whole run (command, executor,
config, seeds, wall time) goes to a sidecar `<csv>.meta.json`. Aggregating (mean ± std per row and column) and the
paired statistics against Naive (`know.stats`) are pure functions of the CSV, so figures and reports regenerate from
cache without computing.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd

from know.io import atomic_write_text
from know.stats import paired_vs_naive

DISPLAY = {"naive": "Naive", "taskvector": "TaskVector", "logfit": "LogFit", "tsv": "TSV",
           "known_official": "KNOWN (official)", "known_ours": "KNOWN (ours)", "wnn": "WNN",
           **{f"known_ours_s{s}": f"KNOWN (ours, S={s})" for s in (2, 3, 4)}}
METRICS = {"acc": "accuracy", "miou": "mIoU", "masked_acc": "masked accuracy", "bleu4": "BLEU-4"}


def row_label(method: str, steps: int, rate: float = 0.5) -> str:
    """'KNOWN (official) ×8' for 3 steps at r = 0.5, '×9' for 2 steps at r = 1/3; 'Naive' for 0 steps."""
    name = DISPLAY.get(method, method)
    if not steps:
        return name
    return f"{name} ×{(1 / rate) ** steps:.3g}"


def write_results(rows: list[dict], csv_path: Path, provenance: dict) -> Path:
    """Atomically write the rows and the provenance sidecar (`<name>.meta.json`)."""
    csv_path = Path(csv_path)
    atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(meta_path(csv_path), json.dumps(provenance, indent=1, default=str))
    return csv_path


def meta_path(csv_path: Path) -> Path:
    return Path(csv_path).with_suffix(".meta.json")


def read_results(csv_path: Path) -> tuple[pd.DataFrame, dict]:
    csv_path = Path(csv_path)
    meta = json.loads(meta_path(csv_path).read_text()) if meta_path(csv_path).exists() else {}
    return pd.read_csv(csv_path, dtype={"column": str}), meta


def column_order(df: pd.DataFrame) -> list[str]:
    """Columns in the order the table ran them (larger fractions first for T-A, as the paper prints them)."""
    return list(dict.fromkeys(df["column"]))


def with_average(df: pd.DataFrame, value: str = "score") -> pd.DataFrame:
    """`df` plus a column "avg": per row and trial, the mean of `value` over the table's columns (T-C reports the
    average over held-out domains); paired statistics on it pair the trials' averages."""
    avg = df.groupby(["method", "steps", "trial"], sort=False)[value].mean().reset_index()
    avg["column"] = "avg"
    return pd.concat([df, avg], ignore_index=True)


def averaged(meta: dict) -> bool:
    """Whether a table reports the average over its columns (held-out domains)."""
    return (meta.get("config") or {}).get("axis") == "domain"


def summarize(df: pd.DataFrame, value: str = "score", average: bool = False) -> pd.DataFrame:
    """Mean, std (ddof=1) and count of `value` (in points) per (method, steps, column), joined with the paired
    statistics against Naive (`know.stats.paired_vs_naive`), in row order of appearance; `average` adds the "avg"
    column (`with_average`)."""
    if average:
        df = with_average(df, value)
    order = list(dict.fromkeys(zip(df["method"], df["steps"])))
    g = df.groupby(["method", "steps", "column"], sort=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out[["mean", "std"]] *= 100
    out = out.merge(paired_vs_naive(df, value), on=["method", "steps", "column"], how="left")
    cols = column_order(df)
    out["order"] = [order.index((m, s)) * len(cols) + cols.index(c)
                    for m, s, c in zip(out["method"], out["steps"], out["column"])]
    return out.sort_values("order").drop(columns="order").reset_index(drop=True)


def read_paper(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#", dtype=str)


def fmt(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "?"
    s = f"{mean:.2f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f"±{std:.2f}"
    return s


def diff_cell(r) -> str:
    """'+1.20 [+0.40, +2.00] better' for a row's paired difference from Naive, '-' for Naive itself."""
    if r["method"] == "naive" or pd.isna(r.get("diff")):
        return "-"
    if pd.isna(r["ci_low"]):
        return f"{r['diff']:+.2f} (n={int(r['n'])})"
    return f"{r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] {r['verdict']}"


def side_by_side(summary: pd.DataFrame, paper: pd.DataFrame | None, rate: float = 0.5) -> str:
    """A text table: one line per row (method × steps), per column 'ours | paired difference | paper'."""
    cols = list(dict.fromkeys(summary["column"]))
    head = ["row"] + [f"{c}: ours | vs Naive, 95% CI | paper" for c in cols]
    lines = []
    for (method, steps), grp in summary.groupby(["method", "steps"], sort=False):
        cells = [row_label(method, int(steps), rate)]
        for c in cols:
            r = grp[grp["column"] == c]
            ours = fmt(*r[["mean", "std"]].iloc[0]) if len(r) else "-"
            cells.append(f"{ours} | {diff_cell(r.iloc[0]) if len(r) else '-'} | {paper_cell(paper, method, steps, c)}")
        lines.append(cells)
    widths = [max(len(str(c[i])) for c in [head] + lines) for i in range(len(head))]
    buf = io.StringIO()
    for cells in [head] + lines:
        buf.write("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() + "\n")
    return buf.getvalue()


def paper_cell(paper: pd.DataFrame | None, method: str, steps: int, column: str) -> str:
    """The paper's 'mean±std' for a row and column, '?' when unknown or absent."""
    if paper is None or "column" not in paper:
        return "?"
    match = paper[(paper["method"] == method) & (paper["column"] == str(column))]
    exact = match[match["steps"] == str(int(steps))]
    r = exact if len(exact) else match[match["steps"] == "?"]
    if not len(r) or r["mean"].iloc[0] == "?":
        return "?"
    std = r["std"].iloc[0]
    return r["mean"].iloc[0] + ("" if std == "?" else f"±{std}")
