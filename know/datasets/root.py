"""Where datasets live: `root` if given, else $KNOW_DATA, else ~/.cache/know/data."""
from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str | os.PathLike | None = None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("KNOW_DATA", "~/.cache/know/data")).expanduser()
