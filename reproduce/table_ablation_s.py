"""T-F, ablation over the trajectory length S: KNOWN meta-trained by this project with window S in {2, 3, 4, 5}
(it reads the newest S sessions of the same trajectory), the official KNOWN and WNN for S = 5, and Naive, at x2/x4/x8 on
100 % of the pre-training data. `--help` lists the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.experiment import Row  # noqa: E402
from know.tables import table_main  # noqa: E402

ROWS = [Row("naive")] + [Row("known", known="ours", steps=(1, 2, 3), window=s) for s in (2, 3, 4, 5)] + [
    Row("known", known="official", steps=(1, 2, 3)), Row("wnn", steps=(1, 2, 3))]

FIXED = {"fractions": (1.0,)}  # the paper's T-F: 100 % of the pre-training data

if __name__ == "__main__":
    raise SystemExit(table_main("table_ablation_s", ROWS, paper_csv="paper/table_ablation_s.csv", fixed=FIXED))
