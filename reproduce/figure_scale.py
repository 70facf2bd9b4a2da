"""When does the official KNOWN apply? resnet18_know at widths 1/16 .. 1 and SimpleNet (the meta-dataset's network)
trained with one small recipe; per parameter kind the weight std, the forgetting sessions' step norms, each
predictor's step ratio to the trajectory's own step, and the upstream accuracy of the predicted points
(know/scale.py). `--help` lists the options; `--scale.<field>=value` sets the study (widths, recipe, methods).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.drivers import script_main  # noqa: E402
from know.tables import FIGURE_SCALE  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(script_main(FIGURE_SCALE))
