"""Paired statistics against Naive: does a row beat Naive transfer, and by how much?

Every trial of a table uses the same downstream seed in every row (head init, batch order, augmentation), so row
and Naive form pairs at each (column, trial). For each row we report, in points (score x 100):
- the mean paired difference d = row − Naive and its standard deviation σ_d over the n pairs;
- the 95 % confidence interval of the mean difference from Student's t with n − 1 degrees of freedom
  (mean ± t_{0.975, n-1} σ_d / √n);
- a verdict: "better" when the whole interval is above 0, "worse" when it is below, else "no detectable difference";
- the minimum detectable effect at α = 0.05 (two-sided) and power 0.8 for a paired t-test,
  MDE = (t_{0.975, n-1} + t_{0.8, n-1}) σ_d / √n (1.66 σ_d at n = 5, 1.15 σ_d at n = 8): a difference smaller than
  the MDE would often go unseen, so a row whose MDE exceeds the effect it looks for is not a result yet.
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats as st

ALPHA, POWER = 0.05, 0.8
VERDICTS = ("better", "worse", "no detectable difference")


def t_interval(diffs: list[float], alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of the (1 − alpha) t confidence interval of the mean of `diffs` (nan when n < 2)."""
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = st.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable mean difference of a two-sided paired t-test with n pairs of difference sd."""
    if n < 2 or math.isnan(sd):
        return math.nan
    return (st.t.ppf(1 - alpha / 2, n - 1) + st.t.ppf(power, n - 1)) * sd / math.sqrt(n)


def verdict(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "no detectable difference"
    return "better" if low > 0 else "worse" if high < 0 else "no detectable difference"


def paired_vs_naive(df: pd.DataFrame, value: str = "score", scale: float = 100.0) -> pd.DataFrame:
    """One line per (method, steps, column): n pairs, mean / sd of row − Naive (in points), 95 % CI, verdict, MDE.
    `df` holds one line per run (method, steps, column, trial, `value`); Naive's own line has a zero difference."""
    naive = df[df["method"] == "naive"].set_index(["column", "trial"])[value]
    out = []
    for (method, steps, column), grp in df.groupby(["method", "steps", "column"], sort=False):
        pairs = [(r[value] - naive[(column, r["trial"])]) * scale for _, r in grp.iterrows()
                 if (column, r["trial"]) in naive.index]
        mean, sd, low, high = t_interval(pairs)
        out.append({"method": method, "steps": steps, "column": column, "n": len(pairs), "diff": mean,
                    "diff_sd": sd, "ci_low": low, "ci_high": high,
                    "verdict": "-" if method == "naive" else verdict(low, high), "mde": mde(sd, len(pairs))})
    return pd.DataFrame(out)


def sentence(label: str, row: dict, column: str, profile: str) -> str:
    """"In the cpu analog, KNOWN (official) ×8 is 1.20 points better than Naive at 100%, 95 % CI [0.40, 2.00]
    (n = 5, MDE 0.9)." — or "no detectably different from" when the interval holds 0."""
    where = "the cpu analog" if profile == "cpu" else f"the {profile} profile"
    d, lo, hi = row["diff"], row["ci_low"], row["ci_high"]
    if row["verdict"] == "no detectable difference":
        how = f"not detectably different from Naive ({d:+.2f} points)"
    else:
        how = f"{abs(d):.2f} points {row['verdict']} than Naive"
    return (f"In {where}, {label} is {how} at {column}, 95 % CI [{lo:+.2f}, {hi:+.2f}] (n = {row['n']}, "
            f"MDE {row['mde']:.2f}).")
