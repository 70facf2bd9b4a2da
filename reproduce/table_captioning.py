"""T-E: image captioning, a frozen PVTv2 encoder (T-B's upstream trajectory) under a Transformer decoder (paper:
Flickr8K; cpu: canvases of coloured digits with five captions each), masked accuracy and BLEU-4; r = 1/3.

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
    raise SystemExit(table_main("table_captioning", ROWS, paper_csv="paper/table_captioning.csv"))
