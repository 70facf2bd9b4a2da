"""T-A, the paper's main table: transfer from KNOW-predicted weights vs Naive and simple weight predictors.

Rows: Naive, TaskVector / LogFit / TSV (x8), KNOWN x2/x4/x8 with the official weights and with a KNOWN meta-trained
by this project, and WNN x2/x4/x8 (the authors' earlier nowcaster, meta-trained on ordinary training
trajectories, not on forgetting). Columns: 100 / 50 / 25 % of the pre-training data. `--help` lists the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.experiment import Row  # noqa: E402
from know.tables import table_main  # noqa: E402

ROWS = [
    Row("naive"),
    Row("taskvector", steps=(3,)),
    Row("logfit", steps=(3,)),
    Row("tsv", steps=(3,)),
    Row("known", known="official", steps=(1, 2, 3)),
    Row("known", known="ours", steps=(1, 2, 3)),
    Row("wnn", steps=(1, 2, 3)),
]

if __name__ == "__main__":
    raise SystemExit(table_main("table1", ROWS, paper_csv="paper/table1.csv"))
