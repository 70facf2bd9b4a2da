"""Forgetting trajectories (docs/method.md §1, §4) and the meta-dataset collector (§3).

`pretrain` trains Θ0 on the full upstream set D0. `forget` fine-tunes it **sequentially** on nested, shrinking
subsets: Θ0 on D1 -> Θ1, Θ1 on D2 -> Θ2, ... (|Dk| = round(|D0| r^k), prefixes of one seeded permutation), and
returns a `Trajectory` (oldest first, Θ0 last). `restart_from_initial=True` is the official sample's variant: every
session k >= 1 starts again from the same random initial weights (Θ0 is whatever `pretrain` gave).

Choices the paper leaves open (ours, documented): a fresh optimizer for every session (Keras re-`fit` would keep
Adam's moments, recompiling would reset them; the official scripts are not in our hands); the batch order and the
augmentation of session k, epoch e come from a generator seeded by (seed, k, e), so a resumed run equals an
uninterrupted one; Adam uses Keras' epsilon 1e-7.

Per-session lists in the trajectory meta (`session_sizes`, `test_metric`, `dist_to_theta0`, `train_loss`) are indexed
by k (Θ0 first), unlike the parameter stacks, which are oldest first; `metric` names what `test_metric` measures
(the upstream objective's: accuracy for classification, mIoU for segmentation, see `know.tasks.OBJECTIVES`).
Θ0 starts from `init`: seeded random weights, timm's pretrained ones, or a state_dict file; `pretrain_epochs=0` makes
that start Θ0 itself (the paper's ImageNet trajectories begin at pretrained weights).

The collector (`collect`, `collect_group`, `collect_one`, `know collect`) samples trials like the official sample
(rate ~ U(0.3, 0.9), lr ~ U(1e-5, 4e-3), batch ~ int(U(32, |D0| r^(S-1))), 7 sessions of one epoch, Adam) over
architectures x datasets. Trials come in groups of `group_size` that share architecture, dataset, rate and batch
size (our choice) and differ in lr and seed (init, subsets, batch order, augmentation), so a group trains in one
stacked pass (`forget_stacked`; SimpleNets with member k in SIMD lane k by C kernels, other nets as grouped
convolutions or torch.func + vmap, see `know.stack`) that equals one-at-a-time training to float rounding.
Each trial's marginal distribution is the official one; within a group rate and batch size are shared, not
independent. The batch-size upper end is capped at `batch_max` (1024, ours) so K stacked members fit in memory.
Job arrays: one task per group (`collect_group(cfg, g, out)`, g < num_groups(cfg)); finished trial files are
skipped, so reruns resume. Speed: benchmarks/collect_speed.py and benchmarks/README.md.

Unit functions (`unit_pretrain`, `unit_forget`, `unit_collect`: `fn(cfg, out_dir, deps)`, see `know.jobs`) run these
as cached jobs of a table (`know.experiment`).
"""
from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from know.config import CollectCfg, ForgetCfg, override, parse_overrides
from know import datasets
from know.data import Augment, ImageSet, get_dataset, nested_subsets, train_split
from know.device import compiled, fast_layout, resolve_device
from know.errors import KnowError
from know.io import atomic_save, read_checkpoint, require_writable
from know.stack import Stack, evaluate_stacked, stackable, train_epoch_stacked
from know.objectives import objective
from know.train import (cpu_state, generator, make_optimizer, seed_from, seeded_model, train_epoch,
                        weight_distance)
from know.trajectory import Trajectory

# Fields that do not change what a run computes (excluded from resume fingerprints).
_NON_IDENTIFYING = ("device", "data_root", "eval_batch_size")




# ---------------------------------------------------------------------------------------------- set-up
def load_data(cfg: ForgetCfg) -> tuple[ImageSet, ImageSet]:
    """Train and (optionally subsampled) test split on the run's device."""
    dev = resolve_device(cfg.device)
    kw = dict(root=cfg.data_root, channels=cfg.channels, size=cfg.size, norm=cfg.norm, device=dev)
    train = get_dataset(cfg.dataset, train_split(cfg.dataset), **kw)
    test = get_dataset(cfg.dataset, datasets.entry(cfg.dataset).test_split, **kw)
    if cfg.eval_images is not None and cfg.eval_images < len(test):
        keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:cfg.eval_images]
        test = test.subset(keep)  # a fixed subset: the same images for every run
    return train, test


def top_size(cfg: ForgetCfg, n_train: int) -> int:
    """|D0|: data_fraction of the (max_images-capped) train split, so fractions keep their ratios under a cap."""
    n = min(n_train, cfg.max_images) if cfg.max_images else n_train
    return max(1, int(round(n * cfg.data_fraction)))


def session_subsets(cfg: ForgetCfg, n_train: int) -> list[Tensor]:
    """D0 ⊃ D1 ⊃ ...: `know.data.nested_subsets` of the train split, seeded by (seed, dataset) only and sized from
    |D0| = `top_size`, so a run on 50 % of the data uses the D1 of the 100 % run as its D0."""
    return nested_subsets(n_train, cfg.rate, cfg.sessions, generator(cfg.seed, cfg.dataset, "subsets"),
                          size=top_size(cfg, n_train))


def build_model(cfg: ForgetCfg, train: ImageSet) -> nn.Module:
    """The run's model with its initial weights (`cfg.init`), on the data's device."""
    kwargs = dict(cfg.model_kwargs, pretrained=True) if cfg.init == "timm" else cfg.model_kwargs
    if cfg.init == "timm" and not cfg.model.startswith("timm:"):
        raise KnowError(f"--forget.init=timm needs a timm model (timm:<name>), not {cfg.model}")
    model = seeded_model(cfg.model, seed_from(cfg.seed, "init"), train.num_classes, train.shape[0],
                         train.shape[-1], kwargs)
    if cfg.init not in ("random", "timm"):
        path = Path(cfg.init)
        if not path.is_file():
            raise KnowError(f"--forget.init={cfg.init}: no such state_dict file (or use random / timm)")
        model.load_state_dict(torch.load(path, map_location="cpu"))
    return fast_layout(model.to(train.x.device))


def _epochs(cfg: ForgetCfg, epochs: int) -> int:
    """A phase's epochs; a rehearsal (limit_steps) runs one, of limit_steps steps."""
    return epochs if cfg.limit_steps is None else min(epochs, 1)


def _train_epoch(cfg: ForgetCfg, model: nn.Module, train: ImageSet, idx: Tensor, opt, gen, aug, desc) -> float:
    """One epoch of the upstream objective (at most `limit_steps` steps)."""
    obj = objective(cfg.task)
    return train_epoch(compiled(model, cfg.compile), train, idx, opt, cfg.batch_size, gen, aug, desc, obj.loss,
                       cfg.limit_steps, cfg.amp, obj.drop_last)


def _evaluate(cfg: ForgetCfg, model: nn.Module, test: ImageSet) -> float:
    return objective(cfg.task).evaluate(compiled(model, cfg.compile), test, cfg.eval_batch_size, cfg.limit_steps,
                                        cfg.amp)


def fingerprint(cfg: ForgetCfg, *extra) -> int:
    """Hash of everything that changes the computation: a checkpoint folder refuses another run's config."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in _NON_IDENTIFYING}
    return seed_from(sorted(fields.items()), *extra)


def _checksum(state: dict[str, Tensor]) -> str:
    return f"{sum(float(v.double().sum()) for v in state.values() if v.is_floating_point()):.10g}"


def _load_ckpt(path: Path, fp: int) -> dict | None:
    ckpt = read_checkpoint(path)
    if ckpt is None:
        return None
    if ckpt.get("fingerprint") != fp:
        raise KnowError(f"{path} belongs to a run with a different config or Θ0; use a fresh --ckpt-dir")
    return ckpt


def _meta(cfg: ForgetCfg, train: ImageSet, sizes: list[int], records: list[dict]) -> dict:
    return {
        "architecture": cfg.model, "model_kwargs": cfg.model_kwargs, "in_chans": train.shape[0],
        "img_size": train.shape[-1], "num_classes": train.num_classes, "dataset": cfg.dataset,
        "rate": cfg.rate, "sessions": cfg.sessions, "session_sizes": sizes, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "epochs_per_session": cfg.epochs_per_session,
        "pretrain_epochs": cfg.pretrain_epochs, "optimizer": cfg.optimizer, "seed": cfg.seed,
        "restart_from_initial": cfg.restart_from_initial, "augment": cfg.augment,
        "data_fraction": cfg.data_fraction, "max_images": cfg.max_images,
        "metric": objective(cfg.task).metric, "test_metric": [r["test_metric"] for r in records], "dist_to_theta0": [r["dist_to_theta0"] for r in records],
        "train_loss": [r["train_loss"] for r in records], "train_s": [r.get("train_s") for r in records],
        "config": asdict(cfg),
    }


# ---------------------------------------------------------------------------------------------- one run
def pretrain(cfg: ForgetCfg, ckpt_dir: str | Path | None = None, progress: bool = True) -> dict[str, Tensor]:
    """Θ0: `pretrain_epochs` epochs on D0 from the seeded initial weights; returns a CPU state_dict.

    With `ckpt_dir`, saves model + optimizer after every epoch (atomically) and resumes from the last one.
    """
    train, _ = load_data(cfg)
    d0 = session_subsets(cfg, len(train))[0]
    model = build_model(cfg, train)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    path, fp, start = (Path(ckpt_dir) / "pretrain.pt" if ckpt_dir else None), fingerprint(cfg), 0
    ckpt = _load_ckpt(path, fp) if path else None
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["epoch"]
    aug = objective(cfg.task).augmentation() if cfg.augment else None
    for e in range(start, _epochs(cfg, cfg.pretrain_epochs)):
        desc = f"pretrain epoch {e + 1}/{cfg.pretrain_epochs}" if progress else None
        _train_epoch(cfg, model, train, d0, opt, generator(cfg.seed, "session", 0, "epoch", e), aug, desc)
        if path:
            atomic_save({"fingerprint": fp, "epoch": e + 1, "model": cpu_state(model), "opt": opt.state_dict()}, path)
    return cpu_state(model)


def forget(cfg: ForgetCfg, theta0_state: dict[str, Tensor], ckpt_dir: str | Path | None = None,
           progress: bool = True) -> Trajectory:
    """Sessions Θ1 .. Θ(S-1) from Θ0 (sequential, or from the initial weights when restart_from_initial).

    Records per session k: the objective's test metric, ‖Θk − Θ0‖₂ over parameters, the last epoch's mean train
    loss.
    With `ckpt_dir`, each finished session and each finished epoch is saved atomically; a rerun resumes.
    """
    train, test = load_data(cfg)
    subsets = session_subsets(cfg, len(train))
    if len(subsets[-1]) < 2:
        raise KnowError(f"the last session D{cfg.sessions - 1} would hold {len(subsets[-1])} image(s) "
                        f"(|D0| = {len(subsets[0])}, r = {cfg.rate:.3g}): raise --forget.max_images or the rate")
    model = build_model(cfg, train)
    init = cpu_state(model)  # the seeded initial weights (restart_from_initial starts every session here)
    pnames = [n for n, _ in model.named_parameters()]
    theta0 = {k: v.detach().cpu() for k, v in theta0_state.items()}
    model.load_state_dict(theta0)
    states = [theta0]
    records = [{"test_metric": _evaluate(cfg, model, test), "dist_to_theta0": 0.0, "train_loss": None}]
    fp = fingerprint(cfg, _checksum(theta0))
    for k in range(1, cfg.sessions):
        start = init if cfg.restart_from_initial else states[-1]
        state, rec = _session(cfg, k, model, start, train, test, subsets[k], ckpt_dir, fp, progress)
        rec["dist_to_theta0"] = weight_distance(state, theta0, pnames)
        states.append(state)
        records.append(rec)
    meta = _meta(cfg, train, [len(s) for s in subsets], records)
    return Trajectory.from_sessions(states, model, meta)


def _session(cfg: ForgetCfg, k: int, model: nn.Module, start: dict, train: ImageSet, test: ImageSet, idx: Tensor,
             ckpt_dir, fp: int, progress: bool) -> tuple[dict[str, Tensor], dict]:
    """Train session k from `start` with a fresh optimizer; resumable from `ckpt_dir`."""
    done = Path(ckpt_dir) / f"session{k}.pt" if ckpt_dir else None
    partial = Path(ckpt_dir) / "session_partial.pt" if ckpt_dir else None
    finished = _load_ckpt(done, fp) if done else None
    if finished:
        return finished["state"], finished["record"]
    model.load_state_dict(start)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    first, loss, before = 0, float("nan"), 0.0
    ckpt = _load_ckpt(partial, fp) if partial else None
    if ckpt and ckpt["session"] == k:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        first, loss, before = ckpt["epoch"], ckpt["loss"], ckpt.get("train_s", 0.0)
    aug = objective(cfg.task).augmentation() if cfg.augment else None
    t0 = time.perf_counter()  # training time only (the forgetting overhead of T-G), not data loading or evaluation
    for e in range(first, _epochs(cfg, cfg.epochs_per_session)):
        desc = f"session {k}/{cfg.sessions - 1} epoch {e + 1}/{cfg.epochs_per_session}" if progress else None
        loss = _train_epoch(cfg, model, train, idx, opt, generator(cfg.seed, "session", k, "epoch", e), aug, desc)
        if partial and e + 1 < cfg.epochs_per_session:
            atomic_save({"fingerprint": fp, "session": k, "epoch": e + 1, "loss": loss, "model": cpu_state(model),
                         "opt": opt.state_dict(), "train_s": before + time.perf_counter() - t0}, partial)
    state = cpu_state(model)
    rec = {"test_metric": _evaluate(cfg, model, test), "train_loss": loss,
           "train_s": before + time.perf_counter() - t0}
    if done:
        atomic_save({"fingerprint": fp, "state": state, "record": rec}, done)
    return state, rec


def pretrain_and_forget(cfg: ForgetCfg, ckpt_dir: str | Path | None = None, progress: bool = True) -> Trajectory:
    """`forget(cfg, pretrain(cfg))`: the one-at-a-time path of a whole trajectory."""
    return forget(cfg, pretrain(cfg, ckpt_dir, progress), ckpt_dir, progress)


# ---------------------------------------------------------------------------------------------- stacked runs
def _check_stackable_cfgs(cfgs: list[ForgetCfg]) -> None:
    shared = [{k: v for k, v in asdict(c).items() if k not in ("lr", "seed")} for c in cfgs]
    if any(s != shared[0] for s in shared[1:]):
        raise ValueError("stacked runs must share every setting except lr and seed")


def can_stack(cfgs: list[ForgetCfg], model: nn.Module) -> bool:
    """Stacking needs a buffer-free, dropout-free model and Adam (the stacked optimizer)."""
    return stackable(model) and cfgs[0].optimizer == "adam"


def forget_stacked(cfgs: list[ForgetCfg], progress: bool = True, backend: str = "auto") -> list[Trajectory]:
    """`pretrain_and_forget` for K runs that differ only in lr and seed, trained as one `Stack`.

    Member m gets its own initial weights, subsets, batch orders and augmentations (from cfgs[m].seed), exactly as
    the one-at-a-time path would, so the results agree to float rounding. Falls back to one at a time when the
    model cannot be stacked (see `can_stack`). backend: "auto" | "lanes" | "wide" | "vmap" (see `know.stack`).
    """
    _check_stackable_cfgs(cfgs)
    c0 = cfgs[0]
    train, test = load_data(c0)
    subsets = [session_subsets(c, len(train)) for c in cfgs]
    models = [build_model(c, train) for c in cfgs]
    template = models[0]
    if not can_stack(cfgs, template):
        return [pretrain_and_forget(c, progress=progress) for c in cfgs]
    inits = [cpu_state(m) for m in models]
    stack = Stack(template, inits, train.x[:2], backend)
    lrs = torch.tensor([c.lr for c in cfgs])
    aug = Augment() if c0.augment else None

    def run(k: int, epochs: int) -> Tensor:
        opt, loss = stack.optimizer(lrs), torch.full((len(cfgs),), float("nan"))  # fresh per session
        for e in range(epochs):
            desc = f"stacked x{len(cfgs)} session {k}/{c0.sessions - 1} epoch {e + 1}/{epochs}" if progress else None
            gens = [generator(c.seed, "session", k, "epoch", e) for c in cfgs]
            loss = train_epoch_stacked(stack, opt, train, [s[k] for s in subsets], c0.batch_size, gens, aug, desc,
                                       c0.limit_steps)
        return loss

    run(0, _epochs(c0, c0.pretrain_epochs))
    theta0 = [stack.member(m) for m in range(len(cfgs))]
    states = [[t] for t in theta0]
    accs = evaluate_stacked(stack, test, c0.eval_batch_size)
    records = [[{"test_metric": a, "dist_to_theta0": 0.0, "train_loss": None}] for a in accs]
    for k in range(1, c0.sessions):
        if c0.restart_from_initial:
            stack.load(inits)
        loss = run(k, _epochs(c0, c0.epochs_per_session))
        accs = evaluate_stacked(stack, test, c0.eval_batch_size)
        for m in range(len(cfgs)):
            states[m].append(stack.member(m))
            records[m].append({"test_metric": accs[m], "train_loss": float(loss[m]),
                               "dist_to_theta0": weight_distance(states[m][-1], theta0[m], stack.names)})
    sizes = [len(s) for s in subsets[0]]
    return [Trajectory.from_sessions(states[m], template, _meta(c, train, sizes, records[m]))
            for m, c in enumerate(cfgs)]


# ---------------------------------------------------------------------------------------------- the collector


def combos(cfg: CollectCfg) -> list[tuple[str, str]]:
    """(model, dataset) pairs; group g uses pair g mod len."""
    return [(m, d) for m in cfg.models for d in cfg.datasets]


def num_groups(cfg: CollectCfg) -> int:
    return math.ceil(cfg.trials / cfg.group_size)


def group_trials(cfg: CollectCfg, group: int) -> list[int]:
    return list(range(group * cfg.group_size, min(cfg.trials, (group + 1) * cfg.group_size)))


@functools.lru_cache(maxsize=16)
def _train_size(dataset: str, root: str | None) -> int:
    return len(get_dataset(dataset, "train", root, size=None))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def trial_cfg(cfg: CollectCfg, trial: int) -> ForgetCfg:
    """The ForgetCfg of trial `trial`: rate and batch size drawn per group, lr and seed per trial."""
    group = trial // cfg.group_size
    model, dataset = combos(cfg)[group % len(combos(cfg))]
    g = generator(cfg.seed, "collect-group", group)
    rate = _uniform(g, cfg.rate_min, cfg.rate_max)
    base = ForgetCfg(model=model, model_kwargs=dict(cfg.model_kwargs), dataset=dataset, data_root=cfg.data_root,
                     channels=cfg.channels, size=cfg.size, max_images=cfg.max_images, rate=rate,
                     sessions=cfg.sessions, pretrain_epochs=cfg.pretrain_epochs,
                     epochs_per_session=cfg.epochs_per_session, augment=cfg.augment,
                     restart_from_initial=cfg.restart_from_initial, device=cfg.device, eval_images=cfg.eval_images,
                     limit_steps=cfg.limit_steps)
    smallest = top_size(base, _train_size(dataset, cfg.data_root)) * rate ** (cfg.sessions - 1)  # |D(S-1)|
    hi = max(cfg.batch_min, min(smallest, cfg.batch_max or math.inf))
    batch = int(_uniform(g, cfg.batch_min, hi))
    lr = _uniform(generator(cfg.seed, "collect-trial", trial), cfg.lr_min, cfg.lr_max)
    return replace(base, batch_size=batch, lr=lr, seed=seed_from(cfg.seed, "collect-trial", trial))


def trial_path(cfg: CollectCfg, trial: int, out_dir: str | Path) -> Path:
    """File name carrying the hyper-parameters, in the official naming style."""
    fc = trial_cfg(cfg, trial)
    arch = fc.model.replace(":", "-")
    return Path(out_dir) / (f"{arch}_{fc.dataset}_trial{trial:05d}_SamplingRate_{fc.rate:.6f}_LR_{fc.lr:.6e}"
                            f"_BS_{fc.batch_size}.safetensors")


def _save_trial(cfg: CollectCfg, trial: int, traj: Trajectory, out_dir) -> Path:
    traj.meta.update(trial=trial, group=trial // cfg.group_size, collect_config=asdict(cfg))
    return traj.save(trial_path(cfg, trial, out_dir))


def collect_one(cfg: CollectCfg, trial: int, out_dir: str | Path, progress: bool = True) -> Path:
    """Train trial `trial` alone (no stacking) and write its trajectory; an existing file is kept."""
    path = trial_path(cfg, trial, out_dir)
    if path.is_file():
        return path
    return _save_trial(cfg, trial, pretrain_and_forget(trial_cfg(cfg, trial), progress=progress), out_dir)


def collect_group(cfg: CollectCfg, group: int, out_dir: str | Path, progress: bool = True) -> list[Path]:
    """Train the unfinished trials of `group` (stacked unless cfg.stacked is False); one job-array task."""
    trials = group_trials(cfg, group)
    todo = [t for t in trials if not trial_path(cfg, t, out_dir).is_file()]
    if not cfg.stacked:
        return [collect_one(cfg, t, out_dir, progress) for t in trials]
    if todo:
        for t, traj in zip(todo, forget_stacked([trial_cfg(cfg, t) for t in todo], progress, cfg.backend)):
            _save_trial(cfg, t, traj, out_dir)
    return [trial_path(cfg, t, out_dir) for t in trials]


def collect(cfg: CollectCfg, out_dir: str | Path, progress: bool = True) -> list[Path]:
    """Every group in turn (locally); finished trials are skipped, so a rerun resumes."""
    from tqdm.auto import tqdm

    paths = []
    for g in tqdm(range(num_groups(cfg)), desc="collect groups", disable=not progress):
        paths += collect_group(cfg, g, out_dir, progress)
    return paths


# ---------------------------------------------------------------------------------------------- unit functions
def unit_pretrain(cfg: dict, out: Path, deps: dict) -> dict:
    """Θ0 of `cfg["forget"]` into out/theta0.pt (resumable from out/ckpt)."""
    t0 = time.perf_counter()
    state = pretrain(ForgetCfg(**cfg["forget"]), ckpt_dir=out / "ckpt", progress=False)
    atomic_save(state, out / "theta0.pt")
    return {"train_s": time.perf_counter() - t0}  # includes loading D0 (seconds, small next to training)


def unit_forget(cfg: dict, out: Path, deps: dict) -> dict:
    """The trajectory from the Θ0 of deps["pretrain"] into out/trajectory.safetensors (resumable)."""
    theta0 = torch.load(deps["pretrain"] / "theta0.pt", map_location="cpu")
    traj = forget(ForgetCfg(**cfg["forget"]), theta0, ckpt_dir=out / "ckpt", progress=False)
    traj.save(out / "trajectory.safetensors")
    return {k: traj.meta[k] for k in ("session_sizes", "metric", "test_metric", "dist_to_theta0", "train_s")}


def unit_collect(cfg: dict, out: Path, deps: dict) -> dict:
    """One collector group's trajectories into out/trajectories/ (finished trials are kept)."""
    paths = collect_group(CollectCfg(**cfg["collect"]), cfg["group"], out / "trajectories", progress=False)
    return {"trajectories": len(paths)}


# ---------------------------------------------------------------------------------------------- CLI
def _split_args(prog: str, description: str, argv: list[str], extra) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                epilog="Any config field can be set with --key=value (see the dataclass).")
    extra(p)
    args, rest = p.parse_known_args(argv)
    return args, parse_overrides(rest)


def main(argv: list[str]) -> int:
    """`know forget --model simplenet --dataset fashion_mnist --out traj.safetensors [--key=value ...]`."""
    def extra(p):
        p.add_argument("--out", required=True, help="trajectory file (.safetensors)")
        p.add_argument("--theta0", default=None, help="state_dict (.pt) of Θ0: skip pre-training")
        p.add_argument("--ckpt-dir", default=None, help="folder for resumable per-epoch / per-session checkpoints")

    args, values = _split_args("know forget", "Pre-train Θ0 and collect a forgetting trajectory.", argv, extra)
    cfg = override(ForgetCfg(), values)
    require_writable(Path(args.out).parent, "output folder", "pass another --out")  # before hours of training
    t0 = time.time()
    theta0 = torch.load(args.theta0, map_location="cpu") if args.theta0 else pretrain(cfg, args.ckpt_dir)
    traj = forget(cfg, theta0, args.ckpt_dir)
    traj.save(args.out)
    accs = ", ".join(f"Θ{k} {a:.4f}" for k, a in enumerate(traj.meta["test_metric"]))
    print(f"wrote {args.out}: {traj.num_sessions} sessions, sizes {traj.meta['session_sizes']}, "
          f"test {traj.meta['metric']} {accs}, {time.time() - t0:.1f} s")
    return 0


def collect_main(argv: list[str]) -> int:
    """`know collect --out DIR [--group G | --trial I] [--key=value ...]`."""
    def extra(p):
        p.add_argument("--out", required=True, help="folder for the trajectory files")
        p.add_argument("--group", type=int, default=None, help="run only this group (a job-array index)")
        p.add_argument("--trial", type=int, default=None, help="run only this trial, alone")

    args, values = _split_args("know collect", "Collect a meta-dataset of forgetting trajectories.", argv, extra)
    cfg = override(CollectCfg(), values)
    require_writable(Path(args.out), "output folder", "pass another --out")
    t0 = time.time()
    if args.trial is not None:
        paths = [collect_one(cfg, args.trial, args.out)]
    elif args.group is not None:
        paths = collect_group(cfg, args.group, args.out)
    else:
        paths = collect(cfg, args.out)
    print(f"{len(paths)} trajectories in {args.out} ({num_groups(cfg)} groups of <= {cfg.group_size}), "
          f"{time.time() - t0:.1f} s")
    return 0
