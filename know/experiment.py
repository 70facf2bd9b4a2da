"""A transfer table as cached units: pre-train -> forget -> (collect -> meta-train) -> predict -> transfer.

A reproduce script declares its rows (`Row`: a predictor, which KNOWN weights, which recurrence steps) and calls
`table_main`; everything else is here. Each box below is one `know.jobs.Unit`, cached under the hash of its config
and code, so reruns skip finished work and a changed setting recomputes only what depends on it:

    per data fraction f:  pretrain(f) -> forget(f) -> predict(f, method) -> transfer(f, method, step, trial)
    once:                 collect(group g) ... -> metatrain        (only when a row uses KNOWN weights "ours")

Naive rows fine-tune Θ0 itself. Trial t of every row uses the same downstream seed (a paired comparison).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from know.config import ExperimentCfg
from know.jobs import Runner, Unit, atomic_save, git_commit

# Which source enters each stage's cache key (a change there recomputes that stage and everything after it).
DATA_CODE = ("know.data", "know.csrc.warp", "know.models", "know.train")  # warp.c: the augmentation's kernel
CODE = {
    "pretrain": DATA_CODE + ("know.forgetting",),
    "forget": DATA_CODE + ("know.forgetting", "know.trajectory"),
    "collect": DATA_CODE + ("know.forgetting", "know.trajectory", "know.lanes", "know.csrc"),  # stacked training
    "metatrain": ("know.known", "know.metatrain", "know.trajectory"),
    "predict": ("know.known", "know.predict", "know.baselines", "know.trajectory"),
    "transfer": DATA_CODE + ("know.transfer",),
}
# ForgetCfg fields that do not change Θ0 (so changing them does not redo pre-training).
FORGET_ONLY = ("rate", "sessions", "epochs_per_session", "restart_from_initial")


@dataclass(frozen=True)
class Row:
    """One table row family: `method` from the predictor registry ("naive" = Θ0 itself), the KNOWN weights for
    KNOWN-like methods ("official" or "ours"), the recurrence steps to fine-tune (1 = ×2, 2 = ×4, 3 = ×8), and
    for our KNOWN the window S it is meta-trained with (it then reads the newest S sessions of the trajectory)."""

    method: str
    known: str | None = None
    steps: tuple[int, ...] = (3,)
    window: int = 5

    @property
    def name(self) -> str:
        name = f"{self.method}_{self.known}" if self.known else self.method
        return name if self.window == 5 else f"{name}_s{self.window}"

    def step_list(self) -> tuple[int, ...]:
        return (0,) if self.method == "naive" else self.steps


# ---------------------------------------------------------------- unit functions: fn(cfg, out_dir, dep_dirs)

def run_pretrain(cfg: dict, out: Path, deps: dict) -> dict:
    from know.forgetting import ForgetCfg, pretrain

    t0 = time.perf_counter()
    state = pretrain(ForgetCfg(**cfg["forget"]), ckpt_dir=out / "ckpt", progress=False)
    atomic_save(state, out / "theta0.pt")
    return {"train_s": time.perf_counter() - t0}  # includes loading D0 (seconds, small next to training)


def run_forget(cfg: dict, out: Path, deps: dict) -> dict:
    from know.forgetting import ForgetCfg, forget

    theta0 = torch.load(deps["pretrain"] / "theta0.pt", map_location="cpu")
    traj = forget(ForgetCfg(**cfg["forget"]), theta0, ckpt_dir=out / "ckpt", progress=False)
    traj.save(out / "trajectory.safetensors")
    return {k: traj.meta[k] for k in ("session_sizes", "test_acc", "dist_to_theta0", "train_s")}


def run_collect(cfg: dict, out: Path, deps: dict) -> dict:
    from know.forgetting import CollectCfg, collect_group

    paths = collect_group(CollectCfg(**cfg["collect"]), cfg["group"], out / "trajectories", progress=False)
    return {"trajectories": len(paths)}


def run_metatrain(cfg: dict, out: Path, deps: dict) -> dict:
    from know.metatrain import MetaTrainCfg, meta_train

    paths = sorted(p for d in deps.values() for p in (d / "trajectories").glob("*.safetensors"))
    models = meta_train(paths, MetaTrainCfg(**cfg["metatrain"]), out)
    return {"trajectories": len(paths), "kinds": sorted(models)}


def load_our_known(metatrain_dir: Path) -> dict:
    """The KNOWN models (best validation epoch) a meta-training unit wrote, by kind."""
    from know.known import load_known

    return {p.stem.removeprefix("known_"): load_known(p) for p in sorted(Path(metatrain_dir).glob("known_*.safetensors"))}


def run_predict(cfg: dict, out: Path, deps: dict) -> dict:
    from know.predict import predict
    from know.trajectory import Trajectory

    traj = Trajectory.load(deps["trajectory"] / "trajectory.safetensors")
    known = load_our_known(deps["known"]) if "known" in deps else cfg["known"]
    p = cfg["predict"]
    states = predict(traj, method=cfg["method"], steps=cfg["steps"], known=known, routing=p["routing"],
                     norm=p["norm"])
    theta0 = traj.theta(0)
    moved = []
    for k, state in enumerate(states, start=1):
        atomic_save(state, out / f"step{k}.pt")
        moved.append(_relative_change(state, theta0))
    return {"relative_change": moved}


def _relative_change(state: dict, ref: dict) -> float:
    """‖state − ref‖ / ‖ref‖ over floating tensors: how far a prediction moved from Θ0."""
    num = sum(float((state[k].double() - ref[k].double()).pow(2).sum()) for k in ref if ref[k].is_floating_point())
    den = sum(float(ref[k].double().pow(2).sum()) for k in ref if ref[k].is_floating_point())
    return (num / max(den, 1e-30)) ** 0.5


def run_transfer(cfg: dict, out: Path, deps: dict) -> dict:
    from know.transfer import TransferCfg, run_transfer as transfer

    step = cfg["step"]
    weights = deps["weights"] / ("theta0.pt" if step == 0 else f"step{step}.pt")
    state = torch.load(weights, map_location="cpu")
    up = cfg["upstream"]
    result = transfer(TransferCfg(**cfg["transfer"]), state, up["model"], up["model_kwargs"], seed=cfg["seed"],
                      ckpt_path=out / "checkpoint.pt", progress=False)
    return {"final_acc": result.final_acc, "best_acc": result.best_acc, "log": result.log}


# ---------------------------------------------------------------- building the grid

def _forget_cfg(cfg: ExperimentCfg, fraction: float):
    return dataclasses.replace(cfg.forget, data_fraction=fraction, data_root=cfg.data_root, device=cfg.device)


def pretrain_unit(cfg: ExperimentCfg, fraction: float) -> Unit:
    fc = {k: v for k, v in asdict(_forget_cfg(cfg, fraction)).items() if k not in FORGET_ONLY}
    return Unit("pretrain", "know.experiment:run_pretrain", {"forget": fc}, code=CODE["pretrain"],
                label=f"pretrain f={fraction:g}")


def forget_unit(cfg: ExperimentCfg, fraction: float) -> Unit:
    return Unit("forget", "know.experiment:run_forget", {"forget": asdict(_forget_cfg(cfg, fraction))},
                deps={"pretrain": pretrain_unit(cfg, fraction)}, code=CODE["forget"], label=f"forget f={fraction:g}")


def metatrain_unit(cfg: ExperimentCfg, window: int = 5) -> Unit:
    from know.forgetting import num_groups

    cc = dataclasses.replace(cfg.collect, data_root=cfg.data_root, device=cfg.device)
    groups = {f"collect{g}": Unit("collect", "know.experiment:run_collect", {"collect": asdict(cc), "group": g},
                                  code=CODE["collect"], label=f"collect group {g}")
              for g in range(num_groups(cc))}
    mc = dataclasses.replace(cfg.metatrain, device=cfg.device, window=window)
    return Unit("metatrain", "know.experiment:run_metatrain", {"metatrain": asdict(mc)}, deps=groups,
                code=CODE["metatrain"], label=f"meta-train KNOWN (window {window})")


def predict_unit(cfg: ExperimentCfg, fraction: float, row: Row) -> Unit:
    deps = {"trajectory": forget_unit(cfg, fraction)}
    if row.known == "ours":
        deps["known"] = metatrain_unit(cfg, row.window)
    return Unit("predict", "know.experiment:run_predict",
                {"method": row.method, "known": row.known, "steps": max(row.steps), "predict": asdict(cfg.predict)},
                deps=deps, code=CODE["predict"], label=f"predict {row.name} f={fraction:g}")


def trial_seed(cfg: ExperimentCfg, fraction: float, trial: int) -> int:
    from know.train import seed_from

    return seed_from(cfg.seed, "transfer", fraction, trial)


def transfer_units(cfg: ExperimentCfg, rows: list[Row]) -> list[tuple[dict, Unit]]:
    """(row identity, unit) for every fine-tune run of the table."""
    out = []
    for f in cfg.fractions:
        fc = _forget_cfg(cfg, f)
        # the upstream input shape travels with the weights: downstream images are adapted to it
        upstream = {"model": fc.model, "model_kwargs": {**fc.model_kwargs, "img_size": fc.size}}
        tc = dataclasses.replace(cfg.transfer, data_root=cfg.data_root, device=cfg.device)
        for row in rows:
            source = pretrain_unit(cfg, f) if row.method == "naive" else predict_unit(cfg, f, row)
            for step in row.step_list():
                for trial in range(cfg.trials):
                    seed = trial_seed(cfg, f, trial)
                    unit = Unit("transfer", "know.experiment:run_transfer",
                                {"transfer": asdict(tc), "upstream": upstream, "step": step, "seed": seed},
                                deps={"weights": source}, code=CODE["transfer"],
                                label=f"transfer {row.name} x{2 ** step} f={f:g} trial {trial}")
                    out.append(({"method": row.name, "steps": step, "fraction": f, "trial": trial, "seed": seed},
                                unit))
    return out


# ---------------------------------------------------------------- running a table

def run_table(name: str, rows: list[Row], cfg: ExperimentCfg, runner: Runner, results_dir: Path,
              figures_dir: Path, paper_csv: Path | None = None) -> list[Path]:
    """Run (or reuse) every unit of the table, then write `<results_dir>/<name>_<profile>.csv`, its provenance,
    the figure, and print ours beside the paper's numbers. Returns the files written."""
    from know.drivers import provenance
    from know.plots import plot_transfer_table
    from know.results import read_paper, read_results, side_by_side, summarize, write_results

    t0 = time.time()
    grid = transfer_units(cfg, rows)
    results = runner.run([u for _, u in grid])
    commit = git_commit()
    records = []
    for ident, unit in grid:
        r = results[unit.key]
        records.append({**ident, "final_acc": r["value"]["final_acc"], "best_acc": r["value"]["best_acc"],
                        "unit_wall_s": r.get("wall_s"), "profile": cfg.profile, "commit": commit})
    csv = Path(results_dir) / f"{name}_{cfg.profile}.csv"
    write_results(records, csv, provenance(name, cfg, runner, t0, seeds=sorted({r["seed"] for r in records}),
                                           rows=[asdict(r) for r in rows]))
    fig = plot_transfer_table(csv, Path(figures_dir) / f"{name}_{cfg.profile}.png")
    paper = read_paper(paper_csv) if paper_csv and Path(paper_csv).exists() else None
    print(f"\n{name} ({cfg.profile}): final test accuracy %, mean ± std over {cfg.trials} trials; paper's in the "
          f"right half of each cell ('?' = unknown)\n")
    print(side_by_side(summarize(read_results(csv)[0]), paper, cfg.forget.rate))
    return [csv, csv.with_suffix(".meta.json"), fig]


def table_main(name: str, rows: list[Row], paper_csv: str | None = None, fixed: dict | None = None,
               argv: list[str] | None = None) -> int:
    """Command line of a transfer-table script (`know.drivers.script_main`): `python reproduce/<name>.py --help`.

    `fixed`: config overrides the table itself declares (e.g. {"fractions": (1.0,)}); the command line still wins.
    """
    from know.drivers import REPO, script_main

    paper = REPO / paper_csv if paper_csv else None
    return script_main(name, lambda cfg, runner, results_dir, figures_dir: run_table(
        name, rows, cfg, runner, results_dir, figures_dir, paper), fixed=fixed, argv=argv)
