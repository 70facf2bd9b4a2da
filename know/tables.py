"""Running a table or figure: its units through a `know.jobs.Runner`, then its CSV, provenance, figure and printout.

Each function here is the `run(cfg, runner, results_dir, figures_dir)` of a reproduce script (`know.drivers`): it
builds the grid's units (`know.experiment`), runs what is not cached, writes `<results>/<name>_<profile>.csv` with its
`.meta.json` (command, commit, profile, seeds, config, wall time) and the figure, and prints ours beside the paper's.
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from know.config import CostCfg, ExperimentCfg, LandscapeCfg
from know.cost import hardware_id, overhead_row
from know.drivers import REPO, Script, provenance, script_main
from know.experiment import (Row, cost_cfg, cost_units, forget_unit, landscape_cfg, landscape_unit, pretrain_unit,
                             scale_units, transfer_units, upstream_unit)
from know.jobs import Runner, git_commit
from know.landscape import EVAL_FIELDS
from know.plots import (plot_cost, plot_differences, plot_forgetting, plot_landscape, plot_masks, plot_scale,
                        plot_transfer_table)
from know.report import read_paper_csv, render_cost, render_scale
from know.results import METRICS, read_paper, read_results, row_label, side_by_side, summarize, write_results
from know.samples import write_mask_samples
from know.stats import sentence


def run_table(name: str, rows: list[Row], cfg: ExperimentCfg, runner: Runner, results_dir: Path,
              figures_dir: Path, paper_csv: Path | None = None) -> list[Path]:
    """Run (or reuse) every unit of the table, then write `<results_dir>/<name>_<profile>.csv`, its provenance,
    the figure, and print ours beside the paper's numbers. Returns the files written."""
    t0 = time.time()
    grid = transfer_units(cfg, rows)
    results = runner.run([u for _, u in grid])
    commit = git_commit()
    records = []
    for ident, unit in grid:
        r = results[unit.key]
        v = r["value"]
        also = {m: x for m, x in v["selected"].items() if m != v["metric"]}  # other metrics (BLEU-4 beside masked acc)
        records.append({**ident, "metric": v["metric"], "score": v["selected"][v["metric"]],
                        "final": v["final"][v["metric"]], "selected_epoch": v["selected_epoch"], **also,
                        "unit_wall_s": r.get("wall_s"), "profile": cfg.profile, "commit": commit})
    csv = Path(results_dir) / f"{name}_{cfg.profile}.csv"
    write_results(records, csv, provenance(name, cfg, runner, t0, seeds=sorted({r["seed"] for r in records}),
                                           rows=[asdict(r) for r in rows]))
    figs = [plot_transfer_table(csv, Path(figures_dir) / f"{name}_{cfg.profile}.png"),
            plot_differences(csv, Path(figures_dir) / f"{name}_{cfg.profile}_vs_naive.png")]
    if cfg.transfer.task == "segmentation":  # the picture of predicted masks beside the truth
        masks = write_mask_samples(grid, runner.cache, Path(results_dir) / f"{name}_{cfg.profile}_masks.npz",
                                   cfg.forget.rate)
        figs += [masks, plot_masks(masks, Path(figures_dir) / f"{masks.stem}.png")]
    paper = read_paper(paper_csv) if paper_csv and Path(paper_csv).exists() else None
    metric = METRICS.get(records[0]["metric"], records[0]["metric"])
    print(f"\n{name} ({cfg.profile}): test {metric} (points), mean ± std over {cfg.trials} trials | paired difference "
          f"from Naive with its 95 % t interval and verdict | the paper's ('?' = unknown)\n")
    summary = summarize(read_results(csv)[0], average=cfg.axis == "domain")
    print(side_by_side(summary, paper, cfg.forget.rate))
    for _, r in summary[summary["method"] != "naive"].iterrows():
        print(sentence(row_label(r["method"], int(r["steps"]), cfg.forget.rate), r, r["column"], cfg.profile))
    return [csv, csv.with_suffix(".meta.json"), *figs]


def table_main(name: str, rows: list[Row], paper_csv: str | None = None, fixed: dict | None = None,
               argv: list[str] | None = None) -> int:
    """Command line of a transfer-table script (`know.drivers.script_main`): `python reproduce/<name>.py --help`.

    `fixed`: config overrides the table itself declares (e.g. {"fractions": (1.0,)}); the command line still wins.
    """
    paper = REPO / paper_csv if paper_csv else None
    script = Script(name, lambda cfg: [u for _, u in transfer_units(cfg, rows)],
                    lambda cfg, runner, results_dir, figures_dir: run_table(name, rows, cfg, runner, results_dir,
                                                                            figures_dir, paper))
    return script_main(script, fixed=fixed, argv=argv)


def figure_landscape(cfg, runner, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Run (or reuse) the landscape unit; write `figure_landscape_<profile>.csv` (+ meta) and its figure."""
    lc: LandscapeCfg = landscape_cfg(cfg)
    t0, unit = time.time(), landscape_unit(cfg, lc)
    rec = runner.run([unit])[unit.key]
    v = rec["value"]
    csv = Path(results_dir) / f"figure_landscape_{cfg.profile}.csv"
    write_results(v["points"] + v["grid"], csv,
                  provenance("figure_landscape", cfg, runner, t0, landscape=asdict(lc), unit_wall_s=rec.get("wall_s"),
                             explained_variance=v["explained_variance"], params=v["params"]))
    _print_points(v["points"], f"landscape ({cfg.profile}, PC1+PC2 explain "
                               f"{100 * sum(v['explained_variance']):.1f} % of the points' variance)")
    return [csv, plot_landscape(csv, Path(figures_dir) / f"{csv.stem}.png")]


def figure_forgetting(cfg, runner, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Run (or reuse) one upstream unit per data fraction; write `figure_forgetting_<profile>.csv` and its figure."""
    lc: LandscapeCfg = landscape_cfg(cfg)
    t0 = time.time()
    units = {f: upstream_unit(cfg, lc, f) for f in cfg.fractions}
    results = runner.run(list(units.values()))
    rows = [{"fraction": f, **r} for f, u in units.items() for r in results[u.key]["value"]["rows"]]
    csv = Path(results_dir) / f"figure_forgetting_{cfg.profile}.csv"
    write_results(rows, csv, provenance("figure_forgetting", cfg, runner, t0,
                                        landscape={k: getattr(lc, k) for k in EVAL_FIELDS},
                                        unit_wall_s=sum(results[u.key].get("wall_s") or 0 for u in units.values())))
    _print_points(rows, f"forgetting curve ({cfg.profile})")
    return [csv, plot_forgetting(csv, Path(figures_dir) / f"{csv.stem}.png")]


def _print_points(rows: list[dict], title: str) -> None:
    print(f"\n{title}: upstream test accuracy % (trained = with the statistics it was trained with)")
    for r in rows:
        trained = r.get("trained_acc")
        extra = "" if trained is None or (isinstance(trained, float) and math.isnan(trained)) else \
            f" (trained {100 * trained:.2f})"
        where = f" f={r['fraction']:g}" if "fraction" in r else ""
        print(f"  {r['method']:>15} {r['label']:>6}{where}: {100 * r['acc']:6.2f}{extra}")


def cost_table(cfg, runner, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Run (or reuse) the timing units and Table 1's pre-train/forget units; write the CSV, figure; print."""
    c: CostCfg = cost_cfg(cfg)
    t0 = time.time()
    timing = cost_units(c)
    pre, fgt = pretrain_unit(cfg, c.fraction), forget_unit(cfg, c.fraction)
    results = runner.run([pre, fgt])
    for u in timing:  # one at a time: concurrent timings would share the cores
        results.update(runner.run([u]))
    rows = [{"part": "prediction", **results[u.key]["value"], "unit_wall_s": results[u.key].get("wall_s")}
            for u in timing]
    rows.append({**overhead_row(cfg, results[pre.key], results[fgt.key]), "fraction": c.fraction})
    csv = Path(results_dir) / f"table_cost_{cfg.profile}.csv"
    keras = "not timed: TensorFlow is not installed" if importlib.util.find_spec("tensorflow") is None else \
        "not timed: no Keras timing path yet"
    write_results(rows, csv, provenance("table_cost", cfg, runner, t0, device=hardware_id(c.device),
                                        cost=asdict(c), official_keras=keras))
    fig = plot_cost(csv, Path(figures_dir) / f"{csv.stem}.png")
    print(f"\ntable_cost ({cfg.profile}): KNOW prediction time, ours vs the paper's T-G ('?' = unknown)\n")
    print(render_cost(pd.read_csv(csv), read_paper_csv(REPO / "paper" / "table_cost.csv"), markdown=False))
    print(f"official Keras KNOWN: {keras}")
    return [csv, csv.with_suffix(".meta.json"), fig]


FIGURE_LANDSCAPE = Script("figure_landscape", lambda cfg: [landscape_unit(cfg, landscape_cfg(cfg))], figure_landscape)
FIGURE_FORGETTING = Script("figure_forgetting", lambda cfg: [upstream_unit(cfg, landscape_cfg(cfg), f)
                                                             for f in cfg.fractions], figure_forgetting)
TABLE_COST = Script("table_cost", lambda cfg: [pretrain_unit(cfg, cfg.cost.fraction),
                                               forget_unit(cfg, cfg.cost.fraction), *cost_units(cost_cfg(cfg))],
                    cost_table)


def figure_scale(cfg: ExperimentCfg, runner: Runner, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Run (or reuse) the scale study's units; write `figure_scale_<profile>.csv` (+ meta) and its figure."""
    t0, grid = time.time(), scale_units(cfg)
    results = runner.run([u for _, u in grid])
    rows = [r for _, u in grid for r in results[u.key]["value"]["rows"]]
    csv = Path(results_dir) / f"figure_scale_{cfg.profile}.csv"
    write_results(rows, csv, provenance("figure_scale", cfg, runner, t0, scale=asdict(cfg.scale),
                                        unit_wall_s=sum(results[u.key].get("wall_s") or 0 for _, u in grid)))
    print(f"\nscale ({cfg.profile}): weight std per kind and the x8 step ratio ‖Θ̂(−3) − Θ̂(−2)‖ / ‖Θ0 − Θ1‖\n")
    print(render_scale(pd.read_csv(csv), markdown=False))
    return [csv, csv.with_suffix(".meta.json"), plot_scale(csv, Path(figures_dir) / f"{csv.stem}.png")]


FIGURE_SCALE = Script("figure_scale", lambda cfg: [u for _, u in scale_units(cfg)], figure_scale)
