"""results/REPORT.md: the paper's numbers beside ours for every cached table, with profiles, wall times, figures
and what the paper leaves unknown. Reads only the cached CSVs (computes nothing). `--help` lists the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.report import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
