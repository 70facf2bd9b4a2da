"""REPORT.md from small fixture CSVs: paper beside ours, profile, wall times, '?' for unknowns, figures, atomicity."""
from pathlib import Path

from know.report import find_results, main, render_report
from know.results import write_results

REPO = Path(__file__).resolve().parents[1]


def _table1(results: Path) -> None:
    rows = [{"method": m, "steps": s, "column": f"{f:.0%}", "fraction": f, "trial": t, "metric": "acc",
             "score": acc + 0.001 * t + (0.002 * t if m != "naive" else 0), "final": acc, "unit_wall_s": 60.0}
            for m, s, acc in (("naive", 0, 0.90), ("known_official", 3, 0.91)) for f in (1.0, 0.25) for t in (0, 1)]
    write_results(rows, results / "table1_cpu.csv",
                  {"table": "table1", "profile": "cpu", "commit": "abc1234", "command": "table1.py --profile cpu",
                   "executor": "local", "wall_s": 3723.0, "rate": 0.5, "created": "2026-01-01T00:00:00",
                   "config": {"trials": 2, "forget": {"model": "resnet18_know", "dataset": "fashion_mnist",
                                                      "pretrain_epochs": 4, "sessions": 5, "rate": 0.5,
                                                      "epochs_per_session": 1},
                              "transfer": {"dataset": "mnist10k", "probe_epochs": 1, "finetune_epochs": 4}}})


def _cost(results: Path) -> None:
    rows = [{"part": "prediction", "model": "resnet18_know", "params": 11232612, "predicted_params": 11223012,
             "steps": 3, "seconds_steps": 6.3, "seconds_per_step": 2.1, "s_per_param_steps": 5.6e-7,
             "s_per_param_step": 1.87e-7, "device": "cpu", "hardware": "cpu: Test CPU, 2 cores", "threads": 2,
             "backend": "c", "unit_wall_s": 30.0},
            {"part": "overhead", "model": "resnet18_know", "rate": 0.5, "sessions": 5, "pretrain_epochs": 4,
             "epochs_per_session": 1, "session_sizes": "8000 4000 2000 1000 500", "formula": 1.875,
             "data_ratio": 0.234375, "pretrain_s": 400.0, "forget_s": 120.0, "measured_ratio": 0.3,
             "seconds_from": "unit wall time", "fraction": 1.0}]
    write_results(rows, results / "table_cost_cpu.csv", {"table": "table_cost", "profile": "cpu", "wall_s": 42.0,
                                                         "commit": "abc1234", "command": "table_cost.py"})


def test_report_paper_beside_ours(tmp_path):
    results, figures = tmp_path / "results", tmp_path / "figures"
    _table1(results)
    _cost(results)
    (results / "notes.csv").write_text("a\n1\n")  # not a known table: ignored
    figures.mkdir()
    (figures / "table1_cpu.png").write_bytes(b"png")
    assert [(n, p) for n, p, _ in find_results(results)] == [("table1", "cpu"), ("table_cost", "cpu")]
    assert main(["--results-dir", str(results), "--paper-dir", str(REPO / "paper")]) == 0
    text = (results / "REPORT.md").read_text()
    assert not list(results.glob(".*.tmp"))  # written atomically
    t_a = text[text.index("## T-A"):text.index("## T-G")]
    assert "profile **cpu**" in t_a and "commit `abc1234`" in t_a and "1:02:03" in t_a  # wall time 3723 s
    assert "compute 0:08:00" in t_a  # 8 units x 60 s
    naive = next(ln for ln in t_a.splitlines() if ln.startswith("| Naive"))
    assert "90.05±0.07 (n=2)" in naive and "92.40" in naive and naive.rstrip(" |").endswith("?")  # paper 25 %: '?'
    known = next(ln for ln in t_a.splitlines() if ln.startswith("| KNOWN (official) ×8"))
    assert "91.15±0.21 (n=2)" in known and "93.55±0.05" in known and "92.92±0.15" in known
    # paired differences 1.0 and 1.2 points: mean 1.1, sd 0.141, t(0.975, 1) = 12.706: CI 1.1 ± 1.27
    assert "+1.10 [-0.17, +2.37] no detectable difference" in known
    assert ("In the cpu analog, KNOWN (official) ×8 is not detectably different from Naive (+1.10 points) at "
            "100%, 95 % CI [-0.17, +2.37] (n = 2, MDE") in t_a
    assert "![table1_cpu](../figures/table1_cpu.png)" in t_a and "fashion_mnist" in t_a
    t_g = text[text.index("## T-G"):]
    assert "3.01±0.09" in t_g and "2.67e-7" in t_g and "2.1" in t_g and "1.875" in t_g and "0.300" in t_g
    assert "## What the paper leaves unknown" in text and "T-A: 22 of 42 cells '?'" in text
    assert render_report(results, figures, REPO / "paper", results) == text  # a pure function of the files


def test_report_without_results(tmp_path):
    text = render_report(tmp_path, tmp_path / "figures", REPO / "paper", tmp_path)
    assert "No result CSVs" in text and "What the paper leaves unknown" in text
