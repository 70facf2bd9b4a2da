"""Paired statistics against Naive on inputs whose answers are known."""
import math

import pandas as pd
import pytest
from scipy import stats as st

from know.stats import mde, paired_vs_naive, sentence, t_interval, verdict


def test_t_interval_known_answer():
    mean, sd, low, high = t_interval([1.0, 2.0, 3.0])
    half = st.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of 1, 2, 3 is 1
    assert (mean, sd) == (2.0, 1.0) and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert math.isnan(t_interval([1.0])[2])


def test_mde_matches_the_issue_constants():
    """MDE = 1.66 σ_d at n = 5 and 1.15 σ_d at n = 8 (α = 0.05 two-sided, power 0.8)."""
    assert mde(1.0, 5) == pytest.approx(1.66, abs=0.005) and mde(1.0, 8) == pytest.approx(1.15, abs=0.005)
    assert mde(0.6, 5) < 1.0 < mde(0.7, 5)


def test_verdicts():
    assert verdict(0.1, 2.0) == "better" and verdict(-2.0, -0.1) == "worse"
    assert verdict(-0.1, 0.1) == "no detectable difference" and verdict(math.nan, 1) == "no detectable difference"


def _runs(naive: list[float], other: list[float], column="100%") -> pd.DataFrame:
    rows = [{"method": "naive", "steps": 0, "column": column, "trial": t, "score": v} for t, v in enumerate(naive)]
    rows += [{"method": "known_official", "steps": 3, "column": column, "trial": t, "score": v}
             for t, v in enumerate(other)]
    return pd.DataFrame(rows)


def test_pairing_is_by_trial_not_by_sort_order():
    """A row that is exactly +1 point in every trial has sd 0 and a tight interval, whatever the trial noise."""
    naive = [0.90, 0.80, 0.95, 0.85, 0.70]
    out = paired_vs_naive(_runs(naive, [v + 0.01 for v in naive])).set_index("method")
    r = out.loc["known_official"]
    assert r["diff"] == pytest.approx(1.0) and r["diff_sd"] == pytest.approx(0, abs=1e-9)
    assert r["verdict"] == "better" and r["n"] == 5 and out.loc["naive", "diff"] == 0


def test_worse_and_undetectable_rows():
    naive = [0.90, 0.91, 0.89, 0.90, 0.90]
    worse = paired_vs_naive(_runs(naive, [0.85, 0.86, 0.84, 0.86, 0.85])).set_index("method").loc["known_official"]
    assert worse["verdict"] == "worse" and worse["ci_high"] < 0
    noisy = paired_vs_naive(_runs(naive, [0.95, 0.85, 0.93, 0.86, 0.91])).set_index("method").loc["known_official"]
    assert noisy["verdict"] == "no detectable difference" and noisy["ci_low"] < 0 < noisy["ci_high"]
    text = sentence("KNOWN (official) ×8", worse.to_dict(), "100%", "cpu")
    assert text.startswith("In the cpu analog, KNOWN (official) ×8 is 4.80 points worse than Naive at 100%, 95 % CI")


def test_average_column_pairs_the_trials_averages():
    from know.results import summarize

    rows = []
    for t in range(3):
        for col, base in (("photo", 0.9), ("sketch", 0.5)):
            rows.append({"method": "naive", "steps": 0, "column": col, "trial": t, "score": base + 0.01 * t})
            rows.append({"method": "known_official", "steps": 1, "column": col, "trial": t,
                         "score": base + 0.01 * t + (0.02 if col == "photo" else 0.0)})
    s = summarize(pd.DataFrame(rows), average=True).set_index(["method", "column"])
    assert s.loc[("naive", "avg"), "mean"] == pytest.approx(71.0)
    assert s.loc[("known_official", "avg"), "diff"] == pytest.approx(1.0)  # (2 + 0) / 2 points in every trial
    assert s.loc[("known_official", "avg"), "verdict"] == "better"
