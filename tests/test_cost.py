"""T-G: the overhead formula, timing units keyed by hardware, and the smoke-profile table_cost run (debug executor)."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from know import experiment
from know.config import CostCfg
from know.cost import data_ratio, overhead_formula
from know.experiment import cost_units
from know.tables import TABLE_COST
from know.drivers import script_main
from know.report import read_paper_csv, render_cost

REPO = Path(__file__).resolve().parents[1]


def test_overhead_formula_and_share():
    assert overhead_formula(0.5, 5) == pytest.approx(1.875)
    assert overhead_formula(1 / 3, 5) == pytest.approx((1 - 3 ** -4) / (2 / 3))
    assert overhead_formula(1.0, 5) == 4
    assert data_ratio([128, 64, 32, 16, 8], 1, 1) == pytest.approx(0.9375)
    assert data_ratio([100, 50], 4, 2) == pytest.approx(0.25)


def test_timing_units_are_keyed_by_hardware(monkeypatch):
    c = CostCfg(models=("debugnet",))
    a = cost_units(c)[0].key
    monkeypatch.setattr(experiment, "hardware_id", lambda device="auto": "cpu: another machine")
    assert cost_units(c)[0].key != a


def test_table_cost_smoke(tmp_path, capsys, known_weights):
    argv = ["--profile", "smoke", "--executor", "debug", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    assert script_main(TABLE_COST, argv=argv) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "results" / "table_cost_smoke.csv")
    pred, over = df[df["part"] == "prediction"], df[df["part"] == "overhead"].iloc[0]
    assert list(pred["model"]) == ["debugnet", "simplenet"]
    assert (pred["seconds_steps"] > 0).all() and (pred["seconds_per_step"] > 0).all()
    assert pred["params"].iloc[0] == 68 and (pred["predicted_params"] <= pred["params"]).all()
    assert pred["s_per_param_step"].iloc[1] == pytest.approx(pred["seconds_per_step"].iloc[1] / pred["params"].iloc[1])
    assert over["formula"] == pytest.approx(1.875) and over["data_ratio"] == pytest.approx(0.9375)
    assert over["measured_ratio"] == pytest.approx(over["forget_s"] / over["pretrain_s"])
    meta = json.loads((tmp_path / "results" / "table_cost_smoke.meta.json").read_text())
    assert meta["profile"] == "smoke" and meta["device"].startswith("cpu") and meta["wall_s"] >= 0
    assert {"command", "commit", "config", "cost"} <= set(meta)
    assert (tmp_path / "figures" / "table_cost_smoke.png").is_file()
    assert "1.875" in out and "simplenet" in out
    # a rerun reuses every unit (timings included: same hardware)
    assert script_main(TABLE_COST, argv=argv) == 0
    assert set(re.findall(r"(\d+) to run", capsys.readouterr().out)) == {"0"}


def test_render_cost_shows_the_paper(tmp_path):
    df = pd.DataFrame([{"part": "prediction", "model": "resnet18_know", "params": 11232612, "steps": 3,
                        "seconds_steps": 9.0, "seconds_per_step": 3.0, "s_per_param_steps": 8.0e-7,
                        "s_per_param_step": 2.7e-7, "hardware": "cpu: X, 2 cores", "device": "cpu", "backend": "c",
                        "threads": 2}])
    text = render_cost(df, read_paper_csv(REPO / "paper" / "table_cost.csv"))
    assert "3.01±0.09" in text and "2.67e-7" in text and "11,232,612" in text and "c kernel, 2 threads" in text
