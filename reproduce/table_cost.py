"""T-G, the cost of KNOW prediction: seconds to predict every parameter of ResNet-18 (the paper's 3.01 s), ViT-S
and PVTv2-b2 with the official KNOWN on this machine's device, and the forgetting trajectory's training time against
the paper's overhead formula (1 - r^(S-1)) / (1 - r), from Table 1's cached units. `--help` lists the options;
`--cost.<field>=value` overrides know.cost.CostCfg.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from know.drivers import script_main  # noqa: E402
from know.tables import TABLE_COST  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(script_main(TABLE_COST))
