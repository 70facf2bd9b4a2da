"""Files written atomically, and checkpoints read back without trusting a damaged one.

Every result, cache record, checkpoint, trajectory and figure goes through `atomic_write` (temp file in the same
folder, then rename): a reader sees the old file or the whole new one, never a partial one.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from know.errors import KnowError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)`, then rename the temp file (same folder) onto `path`: readers see the old file or the
    whole new one, never a partial one. The one mechanism behind every result, cache and checkpoint write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_synced(tmp: str, text: str) -> None:
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: _write_synced(tmp, text))


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save through `atomic_write`."""
    import torch  # here: the job layer imports this module without torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def require_writable(folder: Path, what: str = "folder", fix: str = "choose another") -> Path:
    """Create `folder` if needed and check a file can be written there, before any work is done; else a KnowError
    naming it and the fix. (Root ignores permission bits, but not a path under a regular file or in /proc.)"""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise KnowError(f"{what} {folder} is not writable ({e.strerror or e}); {fix}") from None
    return folder


def read_checkpoint(path: str | Path | None) -> dict | None:
    """A resumable checkpoint, or None when there is none or it cannot be read (damaged from outside: writes are
    atomic): the caller then starts that part again instead of failing or trusting it."""
    import torch

    if not path or not Path(path).is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        warnings.warn(f"ignoring unreadable checkpoint {path} ({type(e).__name__}); recomputing from the start")
        return None
