import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

# Where this environment keeps the authors' weight files and reference outputs (not in the repository: no licence).
# $KNOW_WEIGHTS_DIR / $KNOW_WNN_WEIGHTS_DIR win; these are only the fallback locations.
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
KNOWN_FILES = ("KNOWN_Conv.h5", "KNOWN_FC.h5", "KNOWN_Bias.h5")
WNN_FILES = ("NWNN_Conv_13.h5", "NWNN_FC_13.h5", "NWNN_Bias_13.h5")


def require(condition: bool, reason: str):
    """Skip a test whose external input is missing, but fail under CI where set-up must have provided it."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"missing under CI: {reason}")
    pytest.skip(reason)


def _weights(monkeypatch, env: str, fallback: Path, files: tuple[str, ...], what: str) -> Path:
    d = Path(os.environ.get(env) or fallback)
    missing = [f for f in files if not (d / f).is_file()]
    require(not missing, f"{what} not found ({', '.join(missing)} missing in {d}): set ${env} to their folder")
    monkeypatch.setenv(env, str(d))
    return d


@pytest.fixture
def known_weights(monkeypatch) -> Path:
    """The folder of the authors' KNOWN weights (and reference outputs), exported as $KNOW_WEIGHTS_DIR."""
    return _weights(monkeypatch, "KNOW_WEIGHTS_DIR", REFERENCE / "known_keras", KNOWN_FILES,
                    "the authors' KNOWN weights")


@pytest.fixture
def wnn_weights(monkeypatch) -> Path:
    """The folder of the authors' WNN weights (and reference outputs), exported as $KNOW_WNN_WEIGHTS_DIR."""
    return _weights(monkeypatch, "KNOW_WNN_WEIGHTS_DIR", REFERENCE / "wnn_keras", WNN_FILES,
                    "the authors' WNN weights")
