"""T-B .. T-E (pvtv2, pacs, segmentation, captioning) end to end at the smoke profile: every row of each script's
grid, its CSV, figures and provenance, through the debug executor (one shared cache, as in `reproduce/all.sh`) and
one of them on the local Slurm cluster."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from know.tables import table_main
from tests.conftest import require
from tests.jobfns import SLURM_MISSING, slurm_up

REPO = Path(__file__).resolve().parent.parent
TASK_TABLES = ["table_pvtv2", "table_pacs", "table_segmentation", "table_captioning"]


def _rows(name: str):
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", REPO / "reproduce" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ROWS


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("task-tables")


@pytest.mark.parametrize("name", TASK_TABLES)
def test_task_table_smoke_every_row(name, shared, capsys, known_weights, wnn_weights):
    rows = _rows(name)
    argv = ["--profile", "smoke", "--executor", "debug", "--results-dir", str(shared / "results"),
            "--figures-dir", str(shared / "figures"), "--cache-dir", str(shared / "cache")]
    assert table_main(name, rows, paper_csv=f"paper/{name}.csv", argv=argv) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(shared / "results" / f"{name}_smoke.csv")
    expected = {(r.name, s) for r in rows for s in r.step_list()}
    assert set(zip(df["method"], df["steps"])) == expected
    assert len(df) == len(expected) * df["column"].nunique() * 2  # 2 trials at the smoke profile
    assert df["score"].between(0, 1).all() and df["score"].notna().all()
    meta = json.loads((shared / "results" / f"{name}_smoke.meta.json").read_text())
    assert meta["profile"] == "smoke" and meta["seeds"] and meta["command"]
    assert (shared / "figures" / f"{name}_smoke_vs_naive.png").stat().st_size > 10_000
    assert "Naive" in out and "95 % CI" in out
    if name == "table_captioning":
        assert "bleu4" in df.columns and df["bleu4"].between(0, 1).all()
    if name == "table_segmentation":
        with np.load(shared / "results" / f"{name}_smoke_masks.npz") as z:
            assert z["image"].shape[0] == z["truth"].shape[0] == z["pred_0"].shape[0] == 6
            assert z["truth"].shape == z["pred_0"].shape and str(z["label_0"]) == "Naive"
            assert {str(z[k]) for k in z.files if k.startswith("label_")} >= {"Naive", "KNOWN (official) ×9"}
        assert (shared / "figures" / f"{name}_smoke_masks.png").stat().st_size > 10_000


def test_figures_of_the_task_tables_redraw_from_results(shared):
    from know.plots import regenerate

    if not (shared / "results" / "table_segmentation_smoke_masks.npz").is_file():
        pytest.skip("needs the smoke runs above")
    made = {p.name for p in regenerate(shared / "results", shared / "redrawn")}
    assert "table_segmentation_smoke_masks.png" in made and "table_captioning_smoke_vs_naive.png" in made
    from know.report import write_report

    text = write_report(shared / "results", shared / "figures", REPO / "paper", shared / "REPORT.md").read_text()
    assert "](figures/table_segmentation_smoke_masks.png)" in text and "## T-E" in text and "BLEU-4" in text


def test_task_table_smoke_runs_on_slurm(tmp_path, known_weights, wnn_weights):
    """reproduce/table_pvtv2.py --executor slurm (one trial): the task layer's units as Slurm job arrays."""
    require(slurm_up(), SLURM_MISSING)
    env = dict(os.environ, KNOW_OFFLINE="1")
    cmd = [sys.executable, "reproduce/table_pvtv2.py", "--profile", "smoke", "--executor", "slurm", "--trials", "1",
           "--results-dir", str(tmp_path / "results"), "--figures-dir", str(tmp_path / "figures"),
           "--cache-dir", str(tmp_path / "cache")]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "executor=slurm" in p.stdout and (tmp_path / "results" / "table_pvtv2_smoke.csv").is_file()
