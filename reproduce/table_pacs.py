"""T-C: domain generalisation, leave one domain out (paper: PACS; cpu: four renderings of Fashion-MNIST t10k),
from T-B's PVTv2 upstream; DomainBed's training-domain validation picks the reported epoch.

Rows: Naive, TaskVector / LogFit / TSV x9, KNOWN x3 / x9 (official weights and ours), WNN x3 / x9. Columns: the
held-out domain (`--domains`); REPORT.md adds their average. `--help` lists the options.
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
    raise SystemExit(table_main("table_pacs", ROWS, paper_csv="paper/table_pacs.csv"))
