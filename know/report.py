"""results/REPORT.md: every cached result beside the paper's numbers, a pure function of the CSVs (no compute).

For each result CSV `<table>_<profile>.csv` in the results folder (with its `.meta.json`): the paper's numbers
(paper/<table>.csv, '?' where unknown) and ours side by side, the profile, commit, command and wall times each of
ours came from, and its figure; then what the paper leaves unknown and what this project chose instead.
The output depends only on the files read (no clock), so regenerating it from the same cache gives the same file.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import pandas as pd

from know.io import atomic_write_text
from know.results import METRICS, averaged, diff_cell, paper_cell, read_results, row_label, summarize
from know.stats import sentence

REPO = Path(__file__).resolve().parent.parent
PROFILE_ORDER = ("paper", "cpu", "smoke")
# csv stem without "_<profile>" -> (paper's label, title, paper CSV in paper/, renderer name)
TABLES = {
    "table1": ("T-A", "main table (paper: ResNet-18, CIFAR-100 -> CIFAR-10), downstream test accuracy %",
               "table1.csv", "transfer"),
    "table_ablation_s": ("T-F", "ablation on the trajectory length S, 100 % of the pre-training data, accuracy %",
                         "table_ablation_s.csv", "transfer"),
    "table_pvtv2": ("T-B", "PVTv2 transferred to several datasets (paper: ImageNet -> CIFAR-100, TinyImageNet, Cars, "
                    "CUB, Flowers)", "table_pvtv2.csv", "transfer"),
    "table_pacs": ("T-C", "domain generalisation, leave one domain out (paper: PACS)", "table_pacs.csv", "transfer"),
    "table_segmentation": ("T-D", "semantic segmentation, DeepLabV3+ (paper: VOC -> Cityscapes), mIoU",
                           "table_segmentation.csv", "transfer"),
    "table_captioning": ("T-E", "image captioning, PVTv2 encoder + Transformer decoder (paper: Flickr8K), masked "
                         "accuracy", "table_captioning.csv", "transfer"),
    "table_cost": ("T-G", "cost of KNOW prediction and of the forgetting trajectory", "table_cost.csv", "cost"),
    "figure_landscape": ("figure 2", "loss landscape: the trajectory and the predictions on a PCA plane", None,
                         "landscape"),
    "figure_forgetting": ("-", "forgetting curve: upstream accuracy and ‖Θ − Θ0‖ against data size", None,
                          "forgetting"),
    "figure_scale": ("-", "when does the official KNOWN apply? weight scale against each predictor's step", None,
                     "scale"),
}
# docs/method.md §7 and §4-6: what the paper does not say, and what this project does instead (config field).
UNKNOWN = [
    ("epochs per forgetting session and of pre-training", "`forget.epochs_per_session`, `forget.pretrain_epochs`: "
     "1 each as the official sample (paper profile); each section's setup line gives its own"),
    ("KNOWN meta-training hyper-parameters and number of trajectories", "`metatrain.*`, `collect.*` (our own KNOWN "
     "rows only; the official rows use the released weights)"),
    ("baseline numbers (LogFit, TaskVector, TSV) and their exact definitions", "documented interpretations in "
     "`know/baselines.py`; the paper's cells are '?'"),
    ("downstream recipes outside ResNet-18", "not reproduced (T-B .. T-E)"),
    ("the PVTv2 variant and resolution", "pvt_v2_b2 at 32x32 in T-G (`cost.img_size`)"),
    ("BN/LN handling in prediction", "Θ0's normalisation parameters and statistics are kept (`predict.norm=keep`)"),
    ("best vs last epoch downstream", "the last epoch (`transfer.select=last`; the CSV column `score`), or the "
     "epoch with the best validation metric where a protocol selects (`best_val`: T-C, DomainBed)"),
    ("hardware and timing method of T-G; whether 3.01 s is one recurrence or three", "both reported, on the "
     "hardware named in the table"),
    ("figure 2's plane, grid and BN statistics", "PCA of all drawn points, lattice from the profile, BN re-estimated "
     "per point (`landscape.*`)"),
]


# ---------------------------------------------------------------- finding results

def find_results(results_dir: Path) -> list[tuple[str, str, Path]]:
    """(table, profile, csv) of every known result CSV, in TABLES order, then paper > cpu > smoke."""
    found = []
    for csv in Path(results_dir).glob("*.csv"):
        for name in TABLES:
            profile = csv.stem.removeprefix(f"{name}_")
            if profile != csv.stem and profile in PROFILE_ORDER:
                found.append((name, profile, csv))
    return sorted(found, key=lambda t: (list(TABLES).index(t[0]), PROFILE_ORDER.index(t[1])))


def read_paper_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, comment="#", dtype=str) if path and Path(path).is_file() else None


# ---------------------------------------------------------------- formatting

def md_table(head: list[str], rows: list[list]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "---|" * len(head)] + [line(r) for r in rows]) + "\n"


def text_table(head: list[str], rows: list[list]) -> str:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    return "".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in [head] + rows)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == "?"


def num(v, fmt: str = "{:.2f}") -> str:
    """A number, or '?' when missing."""
    if _missing(v):
        return "?"
    try:
        return fmt.format(float(v))
    except ValueError:
        return str(v)


def duration(seconds) -> str:
    if _missing(seconds):
        return "?"
    s = int(round(float(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 60 else f"{float(seconds):.1f} s"


# ---------------------------------------------------------------- one table each

def render_transfer(df: pd.DataFrame, meta: dict, paper: pd.DataFrame | None) -> str:
    """Rows method × steps; per column: ours (mean ± std, n), the paired difference from Naive with its 95 % t
    interval and verdict, and the paper's cell; then σ_d and the MDE per row, and one sentence per row."""
    summary, rate = summarize(df, average=averaged(meta)), float(meta.get("rate", 0.5))
    cols = list(dict.fromkeys(summary["column"]))
    head = ["row"] + [h for c in cols for h in (f"{c} ours", f"{c} vs Naive [95% CI]", f"{c} paper")]
    rows, power = [], []
    for (method, steps), grp in summary.groupby(["method", "steps"], sort=False):
        label = row_label(method, int(steps), rate)
        cells, pw = [label], [label]
        for c in cols:
            r = grp[grp["column"] == c]
            if not len(r):
                cells += ["-", "-", paper_cell(paper, method, steps, c)]
                pw.append("-")
                continue
            r = r.iloc[0]
            cells += [f"{num(r['mean'])}±{num(r['std'])} (n={r['count']})", diff_cell(r),
                      paper_cell(paper, method, steps, c)]
            pw.append("-" if method == "naive" else f"{num(r['diff_sd'])} / {num(r['mde'])}")
        rows.append(cells)
        if method != "naive":
            power.append(pw)
    text = md_table(head, rows)
    if power:
        text += ("\nσ_d (std of the paired differences, points) / minimum detectable effect (α = 0.05 two-sided, "
                 "power 0.8):\n\n" + md_table(["row"] + cols, power))
        lines = [sentence(row_label(r["method"], int(r["steps"]), rate), r, r["column"], meta.get("profile", "?"))
                 for _, r in summary[summary["method"] != "naive"].iterrows()]
        text += "\n" + "\n".join(f"- {ln}" for ln in lines) + "\n"
    return text


def _paper_cost(paper: pd.DataFrame | None, model: str) -> dict:
    if paper is None or model not in set(paper["model"]):
        return {}
    return paper[paper["model"] == model].iloc[0].to_dict()


def render_cost(df: pd.DataFrame, paper: pd.DataFrame | None, markdown: bool = True) -> str:
    """T-G: prediction seconds per model (ours: all steps, one step, per parameter) beside the paper's; then the
    forgetting overhead (formula, image-epoch share, measured)."""
    fmt = md_table if markdown else text_table
    pred, over = df[df["part"] == "prediction"], df[df["part"] == "overhead"]
    head = ["model", "params", "hardware", "ours: s (steps)", "ours: s / step", "ours: s/param (steps)",
            "ours: s/param / step", "paper: s", "paper: s/param"]
    rows = []
    for _, r in pred.iterrows():
        p = _paper_cost(paper, r["model"])
        seconds = "?" if _missing(p.get("seconds")) else p["seconds"] + ("" if _missing(p.get("seconds_std"))
                                                                          else f"±{p['seconds_std']}")
        rows.append([r["model"], f"{int(r['params']):,}", f"{r['hardware']} ({_backend(r)})",
                     f"{num(r['seconds_steps'], '{:.3g}')} ({int(r['steps'])})", num(r["seconds_per_step"], "{:.3g}"),
                     num(r["s_per_param_steps"], "{:.3g}"), num(r["s_per_param_step"], "{:.3g}"), seconds,
                     p.get("s_per_param", "?")])
    out = fmt(head, rows)
    head = ["model", "r", "S", "epochs (pre / per session)", "|D_k|", "paper's formula (1-r^(S-1))/(1-r)",
            "image-epoch share", "measured (forget s / pre-train s)", "seconds from"]
    rows = [[r["model"], num(r["rate"], "{:g}"), int(r["sessions"]),
             f"{int(r['pretrain_epochs'])} / {int(r['epochs_per_session'])}", r["session_sizes"],
             num(r["formula"], "{:.3f}"), num(r["data_ratio"], "{:.3f}"),
             f"{num(r['measured_ratio'], '{:.3f}')} ({num(r['forget_s'], '{:.1f}')} / "
             f"{num(r['pretrain_s'], '{:.1f}')})",
             r["seconds_from"]] for _, r in over.iterrows()]
    return out + "\n" + fmt(head, rows) if rows else out


def _backend(r) -> str:
    if r["device"] == "cpu":
        load = f", load {num(r['load_avg'], '{:.1f}')}" if "load_avg" in r else ""
        return f"{r['backend']} kernel, {num(r['threads'], '{:.0f}')} threads{load}"
    return r["backend"]


def render_points(df: pd.DataFrame, meta: dict) -> str:
    """The landscape's points: plane coordinates, distance off the plane, accuracy."""
    pts = df[df["kind"] == "point"]
    grid = df[df["kind"] == "grid"]
    ev = meta.get("explained_variance") or [float("nan")] * 2
    lc = meta.get("landscape") or {}
    text = (f"PC1 / PC2 explain {num(100 * ev[0], '{:.1f}')} % / {num(100 * ev[1], '{:.1f}')} % of the points' "
            f"variance ({meta.get('params', '?')} parameters); {lc.get('grid', '?')}² lattice, BN "
            f"{lc.get('bn', '?')}; best lattice accuracy {num(100 * grid['acc'].max())} %.\n\n")
    rows = [[r["method"], r["label"], num(r["a"], "{:.3g}"), num(r["b"], "{:.3g}"), num(r["off_plane"], "{:.3g}"),
             num(100 * r["acc"]), num(100 * r["trained_acc"]) if not _missing(r["trained_acc"]) else "-"]
            for _, r in pts.iterrows()]
    return text + md_table(["method", "point", "PC1", "PC2", "off plane", "acc %", "trained acc %"], rows)


def render_scale(df: pd.DataFrame, markdown: bool = True) -> str:
    """Per network: the weight std per kind, Θ0's upstream accuracy, and per predictor the x2/x4/x8 step ratios
    (all parameters) and the upstream accuracy of its last prediction."""
    fmt = md_table if markdown else text_table
    nets = list(dict.fromkeys(df["network"]))
    kinds = [k for k in ("conv", "fc", "bias", "norm") if k in set(df["kind"])]
    std = df[df["quantity"] == "weight_std"]
    rows = [[n] + [num(std[(std["network"] == n) & (std["kind"] == k)]["value"].max(), "{:.4f}") for k in kinds]
            for n in nets]
    text = "Weight std of Θ0 per kind:\n\n" + fmt(["network"] + kinds, rows)
    ratio, acc = df[(df["quantity"] == "step_ratio") & (df["kind"] == "all")], df[df["quantity"] == "upstream_acc"]
    methods = list(dict.fromkeys(ratio["method"]))
    rows = []
    for n in nets:
        theta0 = acc[(acc["network"] == n) & (acc["method"] == "trajectory")]["value"]
        cells = [n, num(100 * theta0.max()) if len(theta0) else "?"]
        for m in methods:
            r = ratio[(ratio["network"] == n) & (ratio["method"] == m)].sort_values("step")
            a = acc[(acc["network"] == n) & (acc["method"] == m)].sort_values("step")
            cells.append(" / ".join(num(v, "{:.2g}") for v in r["value"]) +
                         (f" ({num(100 * a['value'].iloc[-1])} %)" if len(a) else ""))
        rows.append(cells)
    head = ["network", "Θ0 acc %"] + [f"{row_label(m, 0)}: step ratio x2/x4/x8 (acc of the last)" for m in methods]
    return text + "\nStep ratios ‖Θ̂(−m) − Θ̂(−m+1)‖ / ‖Θ0 − Θ1‖ over all parameters (1 = a step as large as the " \
                  "trajectory's own), and the upstream test accuracy of the last prediction:\n\n" + fmt(head, rows)


def render_forgetting(df: pd.DataFrame, meta: dict) -> str:
    rows = [[f"{r['fraction']:.0%}", r["method"], r["label"], num(r["data_size"], "{:.0f}"), num(100 * r["acc"]),
             num(100 * r["trained_acc"]) if not _missing(r["trained_acc"]) else "-",
             num(r["dist_to_theta0"], "{:.3g}")] for _, r in df.iterrows()]
    return md_table(["data", "method", "weights", "|D|", "acc %", "trained acc %", "‖Θ − Θ0‖"], rows)


# ---------------------------------------------------------------- the report

def provenance_line(df: pd.DataFrame, meta: dict) -> str:
    compute = df["unit_wall_s"].sum() if "unit_wall_s" in df else meta.get("unit_wall_s")
    return (f"profile **{meta.get('profile', '?')}**, commit `{meta.get('commit', '?')}`, created "
            f"{meta.get('created', '?')}, executor {meta.get('executor', '?')}; wall time "
            f"{duration(meta.get('wall_s'))} (of the run that wrote it; units found in the cache took none), compute {duration(compute)} (the "
            f"units' own wall times, summed); command `{meta.get('command', '?')}`")


def setup_line(meta: dict) -> str:
    """The settings behind the numbers, from the resolved config in the meta (the profile decides them)."""
    cfg = meta.get("config") or {}
    fc, tc = cfg.get("forget") or {}, cfg.get("transfer") or {}
    if not fc:
        return ""
    up = (f"upstream {fc.get('model')}{' ' + str(fc['model_kwargs']) if fc.get('model_kwargs') else ''} on "
          f"{fc.get('dataset')} "
          f"(|D0| cap {fc.get('max_images') or 'none'}, {fc.get('pretrain_epochs')} pre-training epoch(s), "
          f"S = {fc.get('sessions')}, r = {fc.get('rate')}, {fc.get('epochs_per_session')} epoch(s) per session)")
    down = (f"; downstream {tc.get('dataset')} ({tc.get('probe_epochs')} + {tc.get('finetune_epochs')} epochs, "
            f"{cfg.get('trials')} trials)") if meta.get("table") in ("table1", "table_ablation_s") else ""
    return f"Setup: {up}{down}.\n"


def render_section(name: str, profile: str, csv: Path, figures_dir: Path, paper_dir: Path, out_dir: Path) -> str:
    label, title, paper_csv, kind = TABLES[name]
    df, meta = read_results(csv)
    paper = read_paper_csv(Path(paper_dir) / paper_csv) if paper_csv else None
    parts = [f"## {label}: {title} ({profile})\n", f"`{csv.name}`: {provenance_line(df, meta)}.\n",
             setup_line(meta)]
    if kind == "transfer":
        metric = METRICS.get(df["metric"].iloc[0], df["metric"].iloc[0]) if "metric" in df else "accuracy"
        parts.append(f"Downstream test {metric} (points) of the reported epoch, mean ± std over trials; the paired "
                     "difference from Naive (same column and trial) with its 95 % t interval and verdict; the paper's "
                     "cell ('?' = unknown, '-' = not run).\n\n" + render_transfer(df, meta, paper))
        for other in [m for m in METRICS if m in df.columns]:  # a task's further metrics (captioning: BLEU-4)
            parts.append(f"\nAlso reported: test {METRICS[other]} of the same epochs (points).\n\n"
                         + render_transfer(df.assign(score=df[other]), meta, None))
    elif kind == "cost":
        parts.append(render_cost(df, paper) + f"\nOfficial Keras KNOWN: {meta.get('official_keras', '?')}.\n")
    elif kind == "landscape":
        parts.append(render_points(df, meta))
    elif kind == "scale":
        parts.append(render_scale(df))
    else:
        parts.append(render_forgetting(df, meta))
    for stem in (csv.stem, f"{csv.stem}_masks"):  # segmentation: the predicted masks beside the ground truth
        fig = Path(figures_dir) / f"{stem}.png"
        if fig.is_file():
            parts.append(f"![{stem}]({os.path.relpath(fig, out_dir)})\n")
    return "\n".join(parts)


def render_unknowns(paper_dir: Path) -> str:
    counts = []
    for name, (label, _, paper_csv, _) in TABLES.items():
        paper = read_paper_csv(Path(paper_dir) / paper_csv) if paper_csv else None
        if paper is not None:
            cells = paper.drop(columns=[c for c in ("method", "steps", "column", "model") if c in paper])
            counts.append(f"{label}: {int((cells == '?').sum().sum())} of {cells.size} cells '?'")
    rows = [[what, ours] for what, ours in UNKNOWN]
    return ("## What the paper leaves unknown\n\n" + "; ".join(counts) + " (docs/method.md §5).\n\n"
            + md_table(["unknown", "this project's choice"], rows))


def render_report(results_dir: Path, figures_dir: Path, paper_dir: Path, out_dir: Path) -> str:
    found = find_results(results_dir)
    head = ["# Reproduction report", "",
            "Generated by `reproduce/report.py` from the cached result CSVs only; every number of ours names the "
            "profile it came from (smoke = plumbing test on synthetic data, cpu = the small offline analog on "
            "Fashion-MNIST -> MNIST, paper = the paper's protocol). Paper numbers: `paper/*.csv` (docs/method.md §5).", ""]
    if not found:
        head.append(f"No result CSVs in `{results_dir}` yet: run `bash reproduce/all.sh`.\n")
    index = [[TABLES[n][0], n, p, f"`{c.name}`"] for n, p, c in found]
    body = [md_table(["paper", "table", "profile", "file"], index)] if index else []
    body += [render_section(n, p, c, figures_dir, paper_dir, out_dir) for n, p, c in found]
    return "\n".join(head + body + [render_unknowns(paper_dir)])


def write_report(results_dir: Path, figures_dir: Path, paper_dir: Path, out: Path) -> Path:
    out = Path(out)
    atomic_write_text(out, render_report(Path(results_dir), Path(figures_dir), Path(paper_dir), out.parent))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reproduce/report.py", description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--figures-dir", default=None, help="default: figures/ beside --results-dir")
    p.add_argument("--paper-dir", default=str(REPO / "paper"))
    p.add_argument("--out", default=None, help="default: REPORT.md in --results-dir")
    args = p.parse_args(argv)
    results = Path(args.results_dir)
    figures = Path(args.figures_dir) if args.figures_dir else results.parent / "figures"
    out = write_report(results, figures, Path(args.paper_dir), Path(args.out) if args.out else results / "REPORT.md")
    print(f"wrote {out}")
    return 0
