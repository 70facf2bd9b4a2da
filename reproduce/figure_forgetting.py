"""The forgetting curve: upstream test accuracy and ‖Θk − Θ0‖ of every session against its data size |Dk|, per
data fraction of Table 1, with the predictions of KNOWN (official) and TaskVector at their virtual sizes |D0| / r^m.
`--help` lists the options; `--landscape.<field>=value` sets the evaluation (methods, bn, bn_images, eval_images).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.drivers import script_main  # noqa: E402
from know.tables import FIGURE_FORGETTING  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(script_main(FIGURE_FORGETTING))
