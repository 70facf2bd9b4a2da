"""T-B: a PVTv2 upstream (paper: ImageNet, r = 1/3) transferred to several downstream datasets (paper: CIFAR-100,
TinyImageNet, Stanford Cars, CUB-200, Oxford Flowers-102; cpu: MNIST-10k, two-digit MNIST, sklearn digits).

Rows: Naive, TaskVector / LogFit / TSV x9, KNOWN x3 / x9 (official weights and ours), WNN x3 / x9. Columns: the
downstream datasets (`--datasets`). `--help` lists the options; profiles in know/profiles.py (TABLES).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.experiment import Row  # noqa: E402
from know.tables import table_main  # noqa: E402

ROWS = [
    Row("naive"),
    Row("taskvector", steps=(2,)),
    Row("logfit", steps=(2,)),
    Row("tsv", steps=(2,)),
    Row("known", known="official", steps=(1, 2)),
    Row("known", known="ours", steps=(1, 2)),
    Row("wnn", steps=(1, 2)),
]

if __name__ == "__main__":
    raise SystemExit(table_main("table_pvtv2", ROWS, paper_csv="paper/table_pvtv2.csv"))
