"""Figures drawn from cached result CSVs only (no compute): `know figures` redraws every one of them."""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from know.io import atomic_write  # noqa: E402
from know.results import METRICS, averaged, read_results, row_label, summarize  # noqa: E402

PALETTE = {"naive": "#7f7f7f", "taskvector": "#9ecae1", "logfit": "#6baed6", "tsv": "#3182bd",
           "known_official": "#e6550d", "known_ours": "#31a354", "wnn": "#756bb1"}


def save_figure(fig, path: Path) -> Path:
    """Atomic PNG write (know.io.atomic_write); closes the figure."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _row_panels(summary: pd.DataFrame, rate: float):
    """(rows in order, columns in order, a figure with one panel per column)."""
    rows = list(dict.fromkeys(zip(summary["method"], summary["steps"])))
    cols = list(dict.fromkeys(summary["column"]))
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 0.42 * len(rows) + 1.6), sharey=True,
                             squeeze=False)
    for ax in axes[0]:
        ax.set_yticks(range(len(rows)), [row_label(m, int(s), rate) for m, s in rows])
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()
    return rows, cols, fig, axes[0]


def plot_transfer_table(csv_path: Path, out: Path, title: str | None = None) -> Path:
    """One panel per column: mean ± std of the reported metric per row, Naive as a dashed reference line."""
    df, meta = read_results(csv_path)
    summary, rate = summarize(df, average=averaged(meta)), float(meta.get("rate", 0.5))
    rows, cols, fig, axes = _row_panels(summary, rate)
    metric = METRICS.get(df["metric"].iloc[0], df["metric"].iloc[0]) if "metric" in df else "accuracy"
    for ax, c in zip(axes, cols):
        part = summary[summary["column"] == c].set_index(["method", "steps"])
        for y, (m, s) in enumerate(rows):
            if (m, s) not in part.index:
                continue
            r = part.loc[(m, s)]
            ax.errorbar(r["mean"], y, xerr=0 if pd.isna(r["std"]) else r["std"], fmt="o", capsize=3,
                        color=PALETTE.get(m, "k"))
            if m == "naive":
                ax.axvline(r["mean"], color=PALETTE["naive"], ls="--", lw=1)
        ax.set_title(str(c))
        ax.set_xlabel(f"downstream test {metric} (%)")
    n = int(summary["count"].max()) if len(summary) else 0
    fig.suptitle(title or f"{Path(csv_path).stem}: mean ± std over {n} trials "
                          f"(profile {meta.get('profile', '?')}, commit {meta.get('commit', '?')})", fontsize=10)
    return save_figure(fig, out)


def plot_differences(csv_path: Path, out: Path) -> Path:
    """One panel per column: each row's mean paired difference from Naive (points) with its 95 % t interval, the
    zero line, and the minimum detectable effect (shaded): the table's answer at a glance."""
    df, meta = read_results(csv_path)
    summary, rate = summarize(df, average=averaged(meta)), float(meta.get("rate", 0.5))
    summary = summary[summary["method"] != "naive"]
    if summary.empty:  # a table of Naive alone has no difference to draw
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{Path(csv_path).stem}: no row besides Naive", ha="center", va="center")
        return save_figure(fig, out)
    rows, cols, fig, axes = _row_panels(summary, rate)
    for ax, c in zip(axes, cols):
        part = summary[summary["column"] == c].set_index(["method", "steps"])
        mdes = part["mde"].dropna()
        if len(mdes):
            ax.axvspan(-mdes.median(), mdes.median(), color="0.9", zorder=0,
                       label=f"± median MDE ({mdes.median():.2f})")
        ax.axvline(0, color="k", lw=1)
        for y, (m, s) in enumerate(rows):
            if (m, s) not in part.index:
                continue
            r = part.loc[(m, s)]
            err = [[r["diff"] - r["ci_low"]], [r["ci_high"] - r["diff"]]] if not pd.isna(r["ci_low"]) else None
            color = {"better": "#31a354", "worse": "#de2d26"}.get(r["verdict"], "0.4")
            ax.errorbar(r["diff"], y, xerr=err, fmt="o", capsize=3, color=color)
        ax.set_title(str(c))
        ax.set_xlabel("difference from Naive (points), 95 % CI")
        if len(mdes):
            ax.legend(fontsize=7, loc="lower right")
    n = int(summary["n"].max()) if len(summary) else 0
    fig.suptitle(f"{Path(csv_path).stem}: paired difference from Naive over {n} trials (green: better, red: worse, "
                 f"grey: no detectable difference; profile {meta.get('profile', '?')}, "
                 f"commit {meta.get('commit', '?')})", fontsize=9)
    return save_figure(fig, out)


# csv stem prefix -> plotting function; the figure goes to figures/<csv stem>.png
FIGURES: dict = {}  # csv stem prefix -> figure of a non-transfer CSV (T-G and the upstream figures, below)
TRANSFER_TABLES = ("table1_", "table_ablation_s_", "table_pvtv2_", "table_pacs_", "table_segmentation_",
                   "table_captioning_")


def regenerate(results_dir: Path, figures_dir: Path) -> list[Path]:
    made = []
    for csv in sorted(Path(results_dir).glob("*.csv")):
        if csv.stem.startswith(TRANSFER_TABLES):
            made.append(plot_transfer_table(csv, Path(figures_dir) / f"{csv.stem}.png"))
            made.append(plot_differences(csv, Path(figures_dir) / f"{csv.stem}_vs_naive.png"))
            continue
        for prefix, fn in FIGURES.items():
            if csv.stem.startswith(prefix):
                made.append(fn(csv, Path(figures_dir) / f"{csv.stem}.png"))
    for npz in sorted(Path(results_dir).glob("*_masks.npz")):
        made.append(plot_masks(npz, Path(figures_dir) / f"{npz.stem}.png"))
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


# ---------------------------------------------------------------- T-G and the upstream figures (issue 6)

def plot_landscape(csv_path: Path, out: Path) -> Path:
    """Figure 2: upstream accuracy contours on the PCA plane, the trajectory Θ(S-1) .. Θ0 and each method's
    predictions Θ(-1) .. (drawn from Θ0)."""
    df, meta = read_results(csv_path)
    grid, pts = df[df["kind"] == "grid"], df[df["kind"] == "point"]
    acc = grid.pivot_table(index="b", columns="a", values="acc") * 100
    fig, ax = plt.subplots(figsize=(6.4, 5))
    cs = ax.contourf(acc.columns, acc.index, acc.values, levels=12, cmap="viridis")
    ax.contour(acc.columns, acc.index, acc.values, levels=12, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="upstream test accuracy (%)")
    traj = pts[pts["method"] == "trajectory"].sort_values("step")
    theta0 = traj[traj["step"] == 0]
    ax.plot(traj["a"], traj["b"], "o-", color="white", mec="k", label="trajectory Θ(S-1) .. Θ0")
    for _, r in traj.iterrows():
        ax.annotate(r["label"], (r["a"], r["b"]), textcoords="offset points", xytext=(4, 4), fontsize=8, color="w")
    for method, part in pts[pts["method"] != "trajectory"].groupby("method", sort=False):
        part = pd.concat([theta0, part.sort_values("step")])
        ax.plot(part["a"], part["b"], "s--", color=PALETTE.get(method, "r"), mec="k",
                label=f"{row_label(method, 0)} Θ(-1) .. Θ(-{int(part['step'].max())})")
    ev = meta.get("explained_variance") or [float("nan")] * 2
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f} % of the points' variance)")
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f} %)")
    ax.legend(fontsize=7, loc="best")
    bn = (meta.get("landscape") or {}).get("bn", "?")
    ax.set_title(f"{Path(csv_path).stem}: BN {bn}, profile {meta.get('profile', '?')}, "
                 f"commit {meta.get('commit', '?')}", fontsize=9)
    return save_figure(fig, out)


def plot_forgetting(csv_path: Path, out: Path) -> Path:
    """Upstream accuracy and ‖Θ − Θ0‖ against (virtual) data size: sessions solid, predictions dashed from Θ0."""
    df, meta = read_results(csv_path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (fraction, part) in enumerate(df.groupby("fraction", sort=False)):
        c = colors[i % len(colors)]
        traj = part[part["method"] == "trajectory"].sort_values("data_size")
        theta0 = traj[traj["step"] == 0]
        for ax, col, scale in ((axes[0], "acc", 100), (axes[1], "dist_to_theta0", 1)):
            ax.plot(traj["data_size"], traj[col] * scale, "o-", color=c, label=f"sessions, {fraction:.0%} data")
            for j, (method, pred) in enumerate(part[part["method"] != "trajectory"].groupby("method", sort=False)):
                pred = pd.concat([theta0, pred.sort_values("step")])
                ax.plot(pred["data_size"], pred[col] * scale, ["s--", "^:", "v-.", "d--"][j % 4], color=c,
                        mfc="none", label=f"{row_label(method, 0)}, {fraction:.0%} data")
        if "trained_acc" in traj:
            axes[0].plot(traj["data_size"], traj["trained_acc"] * 100, "x", color="grey",
                         label="sessions, own BN statistics" if i == 0 else None)
    for ax, label in zip(axes, ("upstream test accuracy (%)", "‖Θ − Θ0‖₂")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("(virtual) training images |D|")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    bn = (meta.get("landscape") or {}).get("bn", "?")
    fig.suptitle(f"{Path(csv_path).stem}: BN {bn}, profile {meta.get('profile', '?')}, "
                 f"commit {meta.get('commit', '?')}", fontsize=10)
    return save_figure(fig, out)


def plot_cost(csv_path: Path, out: Path) -> Path:
    """T-G: seconds to KNOW-predict every parameter, per model (all steps and one), the paper's 3.01 s marked."""
    df, meta = read_results(csv_path)
    pred = df[df["part"] == "prediction"].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(pred) + 1.6))
    ys = range(len(pred))
    ax.barh([y - 0.2 for y in ys], pred["seconds_steps"], height=0.4,
            label=f"ours, {int(pred['steps'].max()) if len(pred) else '?'} steps")
    ax.barh([y + 0.2 for y in ys], pred["seconds_per_step"], height=0.4, label="ours, one step")
    ax.axvline(3.01, color="k", ls="--", lw=1, label="paper: ResNet-18, 3.01 s (hardware unknown)")
    ax.set_yticks(list(ys), [f"{m} ({p / 1e6:.3g} M)" for m, p in zip(pred["model"], pred["params"])])
    ax.invert_yaxis()
    ax.set_xlabel("seconds for all parameters")
    ax.legend(fontsize=7)
    hw = pred["hardware"].iloc[0] if len(pred) else "?"
    ax.set_title(f"{Path(csv_path).stem}: {hw}", fontsize=9)
    return save_figure(fig, out)


def plot_scale(csv_path: Path, out: Path) -> Path:
    """Three panels against the network: Θ0's weight std per kind (the band: within 2x of full-width
    resnet18_know), each predictor's x8 step ratio (log scale, 1 = the trajectory's own step), and the upstream
    accuracy of Θ0 and of each predictor's last prediction."""
    df, meta = read_results(csv_path)
    nets = list(dict.fromkeys(df["network"]))
    xs = range(len(nets))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    std = df[df["quantity"] == "weight_std"]
    for kind in ("conv", "fc", "bias", "norm"):
        part = std[std["kind"] == kind].set_index("network")["value"].reindex(nets)
        axes[0].plot(xs, part.values, "o-", label=kind)
        full = part.get("resnet18_know x1")
        if kind == "conv" and full is not None and not pd.isna(full):
            axes[0].axhspan(full / 2, full * 2, color="0.9", zorder=0, label="conv: within 2x of width 1")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("weight std of Θ0")
    ratio = df[(df["quantity"] == "step_ratio") & (df["kind"] == "all")]
    last = int(ratio["step"].max()) if len(ratio) else 3
    for m, part in ratio[ratio["step"] == last].groupby("method", sort=False):
        axes[1].plot(xs, part.set_index("network")["value"].reindex(nets).values, "s-",
                     color=PALETTE.get(m, None), label=row_label(m, 0))
    axes[1].axhline(1, color="k", lw=1, ls="--")
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"step ratio of prediction {last} (‖Θ̂ step‖ / ‖Θ0 − Θ1‖)")
    acc = df[df["quantity"] == "upstream_acc"]
    theta0 = acc[acc["method"] == "trajectory"].set_index("network")["value"].reindex(nets)
    axes[2].plot(xs, 100 * theta0.values, "o-", color="k", label="Θ0")
    for m, part in acc[acc["method"] != "trajectory"].groupby("method", sort=False):
        part = part[part["step"] == part["step"].max()].set_index("network")["value"].reindex(nets)
        axes[2].plot(xs, 100 * part.values, "s--", color=PALETTE.get(m, None), label=row_label(m, 0))
    axes[2].set_ylabel("upstream test accuracy (%)")
    for ax in axes:
        ax.set_xticks(list(xs), [n.replace("resnet18_know ", "") for n in nets], rotation=30)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{Path(csv_path).stem}: resnet18_know widths and SimpleNet, profile {meta.get('profile', '?')}, "
                 f"commit {meta.get('commit', '?')}", fontsize=10)
    return save_figure(fig, out)


FIGURES.update({"table_cost_": plot_cost, "figure_landscape_": plot_landscape, "figure_forgetting_": plot_forgetting,
                "figure_scale_": plot_scale})


# ---------------------------------------------------------------- T-D: predicted masks beside the truth

def plot_masks(npz_path: Path, out: Path) -> Path:
    """Test images (columns), their ground-truth masks and each row's predicted masks (`know.samples`); one colour
    per class, ignored pixels (255) white."""
    import numpy as np

    with np.load(npz_path) as z:
        image, truth = z["image"], z["truth"]
        classes = [str(c) for c in z["classes"]] if "classes" in z.files else []
        preds = [(str(z[f"label_{i}"]), z[f"pred_{i}"]) for i in range(len(z.files)) if f"pred_{i}" in z.files]
    colours = plt.get_cmap("tab20")(np.arange(20))[:, :3]

    def paint(mask):
        rgb = colours[np.minimum(mask, 19)]
        rgb[mask == 255] = 1.0
        return rgb

    panels = [("image", image), ("ground truth", [paint(m) for m in truth])]
    panels += [(label, [paint(m) for m in pred]) for label, pred in preds]
    n = len(image)
    fig, axes = plt.subplots(len(panels), n, figsize=(1.2 * n + 1.6, 1.2 * len(panels) + 0.9), squeeze=False)
    fig.subplots_adjust(left=1.5 / (1.2 * n + 1.6), right=0.99, wspace=0.05, hspace=0.08, top=0.95, bottom=0.1)
    for r, (label, pictures) in enumerate(panels):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(pictures[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if classes:
        from matplotlib.patches import Patch

        fig.legend([Patch(color=colours[min(i, 19)]) for i in range(len(classes))] + [Patch(color="white", ec="k")],
                   classes + ["ignored"], loc="lower center", ncol=min(len(classes) + 1, 6), fontsize=7,
                   frameon=False)
    fig.suptitle(f"{Path(npz_path).stem}: first test images, trial 0, last epoch", fontsize=9)
    return save_figure(fig, out)
