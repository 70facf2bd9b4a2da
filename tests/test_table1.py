"""Table 1 end to end at the smoke profile, through the job layer (debug and local executors)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from know.experiment import Row
from know.tables import table_main

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "reproduce"))


def _run(tmp_path, rows, *extra, executor="debug"):
    argv = ["--profile", "smoke", "--executor", executor, "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache"), *extra]
    assert table_main("table1", rows, paper_csv="paper/table1.csv", argv=argv) == 0
    return pd.read_csv(tmp_path / "results" / "table1_smoke.csv")


def _transfer_runs(tmp_path) -> int:
    return len(list((tmp_path / "cache" / "transfer").glob("*/done")))


def test_smoke_table1_every_row_debug_executor(tmp_path, capsys, known_weights, wnn_weights):
    from table1 import ROWS

    df = _run(tmp_path, ROWS)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("[table1] profile=smoke (--profile) executor=debug")
    expected = {(r.name, s) for r in ROWS for s in r.step_list()}
    assert set(zip(df["method"], df["steps"])) == expected
    assert len(df) == len(expected) * 2 * 2  # 2 fractions x 2 trials at the smoke profile
    assert df["score"].between(0, 1).all() and (df["profile"] == "smoke").all()
    meta = json.loads((tmp_path / "results" / "table1_smoke.meta.json").read_text())
    assert meta["profile"] == "smoke" and meta["commit"] and meta["seeds"] and meta["wall_s"] > 0
    assert (tmp_path / "figures" / "table1_smoke.png").stat().st_size > 10_000
    assert "KNOWN (official) ×8" in out and "93.55±0.05" in out  # ours beside the paper's number


def test_rerun_skips_cached_units_and_changed_config_recomputes_only_dependents(tmp_path, capsys):
    rows = [Row("naive"), Row("taskvector", steps=(1,))]
    first = _run(tmp_path, rows)
    assert _transfer_runs(tmp_path) == 8
    capsys.readouterr()
    again = _run(tmp_path, rows)
    assert "0 to run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(first.drop(columns="unit_wall_s"), again.drop(columns="unit_wall_s"))
    # a downstream-only change: upstream units stay cached, every fine-tune run is redone
    _run(tmp_path, rows, "--transfer.probe_epochs=2")
    out = capsys.readouterr().out
    assert "8 to run" in out.splitlines()[1] and _transfer_runs(tmp_path) == 16
    assert len(list((tmp_path / "cache" / "pretrain").glob("*/done"))) == 2


def test_local_executor_processes(tmp_path, known_weights):
    rows = [Row("naive"), Row("known", known="official", steps=(1, 3))]
    df = _run(tmp_path, rows, "--trials=1", "--fractions=[1.0]", "--parallel=2", executor="local")
    assert sorted(zip(df["method"], df["steps"])) == [("known_official", 1), ("known_official", 3), ("naive", 0)]


def test_cli_bad_profile_and_unknown_key_exit_nonzero(tmp_path):
    script = REPO / "reproduce" / "table1.py"
    bad = subprocess.run([sys.executable, str(script), "--profile", "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid choice: 'nope'" in bad.stderr
    key = subprocess.run([sys.executable, str(script), "--profile", "smoke", "--forget.lrr=1",
                          "--results-dir", str(tmp_path)], capture_output=True, text=True)
    assert key.returncode != 0 and "unknown config key 'forget.lrr'" in key.stderr
    assert "lr" in key.stderr.strip().splitlines()[-1]


def test_figures_regenerate_from_cache_without_compute(tmp_path):
    _run(tmp_path, [Row("naive")])
    fig = tmp_path / "figures" / "table1_smoke.png"
    fig.unlink()
    out = subprocess.run([sys.executable, "-m", "know", "figures", "--results-dir", str(tmp_path / "results"),
                          "--figures-dir", str(tmp_path / "figures")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and fig.exists()
