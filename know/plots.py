"""Figures drawn from cached result CSVs only (no compute): `know figures` redraws every one of them."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from know.results import read_results, row_label, summarize  # noqa: E402

PALETTE = {"naive": "#7f7f7f", "taskvector": "#9ecae1", "logfit": "#6baed6", "tsv": "#3182bd",
           "known_official": "#e6550d", "known_ours": "#31a354", "wnn": "#756bb1"}


def save_figure(fig, path: Path) -> Path:
    """Atomic PNG write (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_transfer_table(csv_path: Path, out: Path, title: str | None = None) -> Path:
    """One panel per data fraction: mean ± std downstream accuracy per row, Naive as a dashed reference line."""
    df, meta = read_results(csv_path)
    summary = summarize(df)
    rate = float(meta.get("rate", 0.5))
    fractions = sorted(summary["fraction"].unique(), reverse=True)
    rows = list(dict.fromkeys(zip(summary["method"], summary["steps"])))
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 0.42 * len(rows) + 1.6),
                             sharey=True, squeeze=False)
    for ax, f in zip(axes[0], fractions):
        part = summary[summary["fraction"] == f].set_index(["method", "steps"])
        ys = range(len(rows))
        for y, (m, s) in zip(ys, rows):
            if (m, s) not in part.index:
                continue
            r = part.loc[(m, s)]
            ax.errorbar(r["mean"], y, xerr=0 if pd.isna(r["std"]) else r["std"], fmt="o", capsize=3,
                        color=PALETTE.get(m, "k"))
            if m == "naive":
                ax.axvline(r["mean"], color=PALETTE["naive"], ls="--", lw=1)
        ax.set_yticks(list(ys), [row_label(m, int(s), rate) for m, s in rows])
        ax.invert_yaxis()
        ax.set_title(f"{f:.0%} of pre-training data")
        ax.set_xlabel("downstream test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    n = int(summary["count"].max()) if len(summary) else 0
    fig.suptitle(title or f"{Path(csv_path).stem}: mean ± std over {n} trials "
                          f"(profile {meta.get('profile', '?')}, commit {meta.get('commit', '?')})", fontsize=10)
    return save_figure(fig, out)


# csv stem prefix -> plotting function; the figure goes to figures/<csv stem>.png
FIGURES = {"table1_": plot_transfer_table}


def regenerate(results_dir: Path, figures_dir: Path) -> list[Path]:
    made = []
    for csv in sorted(Path(results_dir).glob("*.csv")):
        for prefix, fn in FIGURES.items():
            if csv.stem.startswith(prefix):
                made.append(fn(csv, Path(figures_dir) / f"{csv.stem}.png"))
    return made


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="know figures", description="Redraw every figure from cached result CSVs.")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--figures-dir", default="figures")
    args = p.parse_args(argv)
    made = regenerate(Path(args.results_dir), Path(args.figures_dir))
    for path in made:
        print(f"wrote {path}")
    if not made:
        print(f"no result CSVs with a figure in {args.results_dir}")
    return 0
