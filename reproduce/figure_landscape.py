"""Figure 2, the loss landscape: the trajectory Θ4 .. Θ0 and the predicted Θ(-1) .. Θ(-3) of KNOWN (official) and
TaskVector on the PCA plane of those weights, over upstream test-accuracy contours evaluated on a lattice of the
plane (Table 1's cached trajectory and predictions, 100 % data). `--help` lists the options;
`--landscape.<field>=value` overrides know.landscape.LandscapeCfg (grid, margin, fit_on, methods, bn, ...).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.drivers import script_main  # noqa: E402
from know.tables import FIGURE_LANDSCAPE  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(script_main(FIGURE_LANDSCAPE))
