"""Where Naive's spread between trials comes from: the models, or the size of the test set.

The test metric of trial s on a fixed test set of n items varies between trials for two reasons:
- model-level: the trials' models differ on any test set drawn from the same distribution (an OOD domain where
  each seed lands on its own solution). A larger test set does not shrink it.
- seed × item: on a given item, some trials are right and some wrong; averaged over n items this part of the
  variance falls as 1/n, so a larger test set shrinks it.
The covariance between the metric on two disjoint random halves of the test set, taken over the trials, estimates
the model-level variance (the halves share no item, so only the model-level part is common to both); what is left of
the observed variance is the seed × item part, and `std_at(m)` extrapolates the spread to a test set of m items.

Reads the Naive fine-tune units of a table from the unit cache (their checkpoints hold the reported epoch's weights)
and prints, per column, the observed std, its model-level part and the std predicted for 4x and 10x the items, on
the validation split by default (where settings are chosen; `--split test` diagnoses a committed table):

    python scripts/spread.py --table table_pacs --profile cpu [--split val|test] [--section.field=value ...]

Classification-like tasks score per item (accuracy), segmentation per canvas (confusion matrices, then mIoU over
the classes present). The overrides pick the same units as the run that made them (e.g. a pilot's settings).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.config import TransferCfg, parse_overrides  # noqa: E402
from know.drivers import default_cache  # noqa: E402
from know.errors import KnowError  # noqa: E402
from know.experiment import Row, transfer_units  # noqa: E402
from know.objectives import IGNORE  # noqa: E402
from know.profiles import make_config  # noqa: E402
from know.tasks import TASKS  # noqa: E402
from know.tasks.base import upstream_info  # noqa: E402


def item_metric(stat: np.ndarray) -> float:
    """The metric in points of one trial's per-item statistics: correctness (n,) -> accuracy; per-canvas confusion
    matrices (n, k, k) -> mIoU over the classes that occur in the targets or the predictions."""
    if stat.ndim == 1:
        return 100 * float(stat.mean())
    conf = stat.sum(0)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return 100 * float((tp[union > 0] / union[union > 0]).mean())


def decompose(stats: list[np.ndarray], splits: int = 200, seed: int = 0) -> dict:
    """Observed std of the metric over trials (`stats`: one per-item array per trial, items aligned), its model-level
    part (mean over `splits` random half-splits of the covariance between the halves' metrics) and the test size n."""
    if len(stats) < 3:
        raise KnowError(f"{len(stats)} trials: the spread needs at least 3")
    n, rng = len(stats[0]), np.random.default_rng(seed)
    full = np.array([item_metric(s) for s in stats])
    covs = []
    for _ in range(splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2:]
        covs.append(np.cov([item_metric(s[a]) for s in stats], [item_metric(s[b]) for s in stats])[0, 1])
    var = float(full.var(ddof=1))
    return {"n": n, "mean": float(full.mean()), "std": var ** 0.5, "model_var": max(0.0, float(np.mean(covs))),
            "var": var}


def std_at(d: dict, m: int) -> float:
    """The spread predicted for a test set of m items: the model-level part plus the seed × item part scaled by n/m."""
    return (d["model_var"] + max(0.0, d["var"] - d["model_var"]) * d["n"] / m) ** 0.5


def unit_stats(unit, cache: Path, split: str = "val") -> np.ndarray:
    """Per-item statistics of one cached fine-tune unit's reported (selected) model on its `split` ("val": the
    validation split settings are chosen on; "test": the reported one, for diagnosis only)."""
    folder = cache / "transfer" / unit.key
    if not (folder / "checkpoint.pt").is_file():
        raise KnowError(f"{unit.label}: not in the cache {cache} ({folder}); run the table (or the pilot) first")
    ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = TransferCfg(**unit.cfg["transfer"])
    module, name = TASKS[cfg.task].split(":")
    task = getattr(importlib.import_module(module), name)(cfg, unit.cfg["seed"])
    theta0 = torch.load(cache / "pretrain" / unit.deps["weights"].key / "theta0.pt", map_location="cpu")
    up = unit.cfg["upstream"]
    upstream = upstream_info(theta0, up["model"], up["model_kwargs"])
    train, val, test = task.load(upstream)
    data = test if split == "test" else val
    if data is None:
        raise KnowError(f"{unit.label}: no validation split (set --transfer.val_images, or use --split test)")
    model = task.build(theta0, upstream, train)
    model.load_state_dict((ckpt.get("best") or {}).get("state") or ckpt["model"])
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(data.x[i:i + 256]).argmax(1) for i in range(0, len(data), 256)])
    if pred.dim() == 1:
        return (pred == data.y).double().numpy()
    k, y = data.num_classes, data.y.long()
    keep = y != IGNORE
    cell = (torch.arange(len(y)).view(-1, 1, 1) * k + y.clamp(max=k - 1)) * k + pred
    return torch.bincount(cell[keep], minlength=len(y) * k * k).view(len(y), k, k).double().numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Any config field can be overridden "
                                     "as --section.field=value (the run's own overrides, to find its units).")
    parser.add_argument("--table", required=True, help="e.g. table_pacs, table_segmentation, table1")
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "paper"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $KNOW_CACHE or runs/cache")
    parser.add_argument("--trials", type=int, default=None, help="default: the profile's")
    parser.add_argument("--split", default="val", choices=("val", "test"),
                        help="val (default): the split settings are chosen on; test: the reported split, to diagnose a "
                        "committed table only (never to choose settings)")
    parser.add_argument("--splits", type=int, default=200, help="random half-splits averaged (default 200)")
    args, rest = parser.parse_known_args(argv)
    tables = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "reproduce").glob("table*.py"))
    if args.table not in tables:
        raise KnowError(f"--table={args.table} is not a table; choices: {', '.join(tables)}")
    overrides = dict(parse_overrides(rest), **({"trials": args.trials} if args.trials else {}))
    cfg = make_config(args.profile, overrides, table=args.table)
    cache = args.cache_dir or default_cache()
    by_column: dict[str, list[np.ndarray]] = {}
    for ident, unit in transfer_units(cfg, [Row("naive")]):
        by_column.setdefault(ident["column"], []).append(unit_stats(unit, cache, args.split))
    out = {}
    for column, stats in by_column.items():
        d = out[column] = decompose(stats, args.splits)
        print(f"{column}: {len(stats)} trials, {args.split} n = {d['n']}: mean {d['mean']:.2f}, std {d['std']:.2f}; "
              f"model-level part {d['model_var'] ** 0.5:.2f}; predicted std at 4n {std_at(d, 4 * d['n']):.2f}, "
              f"at 10n {std_at(d, 10 * d['n']):.2f}")
    return out


if __name__ == "__main__":
    try:
        main()
    except KnowError as e:
        raise SystemExit(f"spread.py: {e}")
