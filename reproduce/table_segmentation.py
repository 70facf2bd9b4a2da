"""T-D: semantic segmentation with DeepLabV3+ (paper: pre-trained on Pascal VOC, transferred to Cityscapes; cpu:
canvases of Fashion-MNIST items -> canvases of coloured digits), mIoU; r = 1/3 (x3, x9).

Rows: Naive, TaskVector x3 / x9, LogFit and TSV x9, KNOWN x3 / x9 (official weights and ours), WNN x3 / x9.
`--help` lists the options; profiles in know/profiles.py (TABLES).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.experiment import Row  # noqa: E402
from know.tables import table_main  # noqa: E402

ROWS = [
    Row("naive"),
    Row("taskvector", steps=(1, 2)),
    Row("logfit", steps=(2,)),
    Row("tsv", steps=(2,)),
    Row("known", known="official", steps=(1, 2)),
    Row("known", known="ours", steps=(1, 2)),
    Row("wnn", steps=(1, 2)),
]

if __name__ == "__main__":
    raise SystemExit(table_main("table_segmentation", ROWS, paper_csv="paper/table_segmentation.csv"))
