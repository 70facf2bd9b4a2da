"""scripts/spread.py: the split-half decomposition of Naive's spread recovers a known model-level part."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest


def _spread():
    spec = importlib.util.spec_from_file_location("spread", Path(__file__).parents[1] / "scripts" / "spread.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trials(model_sd: float, trials: int = 12, items: int = 4000, seed: int = 0) -> list[np.ndarray]:
    """Per-item correctness: each trial's accuracy is shifted by its own model-level offset, items flip at random."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.9, items)  # item difficulty, shared by every trial
    return [(rng.random(items) < np.clip(base + rng.normal(0, model_sd), 0, 1)).astype(float)
            for _ in range(trials)]


def test_decompose_finds_the_model_level_part_and_predicts_the_spread_of_a_larger_test_set():
    spread = _spread()
    d = spread.decompose(_trials(0.02), splits=50)
    assert d["n"] == 4000 and d["std"] > d["model_var"] ** 0.5
    assert 1.2 < d["model_var"] ** 0.5 < 3.0  # the 2-point offset per trial, within sampling error of 12 trials
    assert spread.std_at(d, 4000) == pytest.approx(d["std"])
    assert spread.std_at(d, 40000) < d["std"]

    flips_only = spread.decompose(_trials(0.0), splits=50)  # no model-level part: only item flips
    assert flips_only["model_var"] ** 0.5 < 0.5
    assert spread.std_at(flips_only, 40000) < 0.5 * flips_only["std"]


def test_item_metric_scores_accuracy_and_miou_from_confusion_matrices():
    spread = _spread()
    assert spread.item_metric(np.array([1.0, 0.0, 1.0, 1.0])) == pytest.approx(75.0)
    conf = np.zeros((2, 3, 3))
    conf[0, 0, 0], conf[0, 1, 1], conf[1, 1, 0] = 4, 2, 2  # class 2 never occurs: left out of the mean
    # class 0: tp 4, union 4 + 2 = 6; class 1: tp 2, union 2 + 2 = 4
    assert spread.item_metric(conf) == pytest.approx(100 * (4 / 6 + 2 / 4) / 2)


def test_decompose_refuses_fewer_than_three_trials():
    spread = _spread()
    with pytest.raises(Exception, match="at least 3"):
        spread.decompose(_trials(0.0, trials=2, items=10))


def test_unknown_table_and_missing_units_are_one_line_errors(tmp_path):
    spread = _spread()
    with pytest.raises(Exception, match="is not a table; choices: table1"):
        spread.main(["--table", "nonsense"])
    with pytest.raises(Exception, match="not in the cache"):
        spread.main(["--table", "table_pacs", "--profile", "smoke", "--cache-dir", str(tmp_path)])
