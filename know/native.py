"""Native kernels compiled on first use: the fused KNOWN predictor (know/predict.py) and the lane kernels for stacked
SimpleNets (know/lanes.py, know/csrc/lanes.c).

`build` compiles a source once per machine into `$XDG_CACHE_HOME/know/kernels` (default ~/.cache/know/kernels; a
temporary folder when that is not writable), named by a hash of the source, compiler, flags and CPU: the code is
built with -march=native, so a cache shared by several machines never mixes them. The write is atomic, so
concurrent jobs never load a half-written library. `$KNOW_CKERNEL=0` turns every native kernel off. Without a
compiler, or when a build fails, `build` warns and returns None and the caller takes its PyTorch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

ENV = "KNOW_CKERNEL"  # set to 0 to force the PyTorch paths
COMPILERS = {"c": ("CC", ("cc", "gcc", "clang")), "c++": ("CXX", ("g++", "c++", "clang++"))}


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def cpu_signature() -> str:
    """Identifies the CPU a -march=native build is for."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    return platform.machine() + "|".join(lines)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "know" / "kernels"


def compiler(lang: str) -> str | None:
    env, names = COMPILERS[lang]
    return os.environ.get(env) or next((p for p in map(shutil.which, names) if p), None)


def build(name: str, source: str, lang: str, flags: list[str], fallback: str) -> ctypes.CDLL | None:
    """The library built from `source` ("c" or "c++"), or None; `fallback` ends the warning ("...: <fallback>")."""
    if not enabled():
        return None
    cc = compiler(lang)
    if cc is None:
        warnings.warn(f"no {lang.upper()} compiler found: {fallback}", stacklevel=3)
        return None
    key = hashlib.sha256("\n".join([source, cc, *flags, cpu_signature()]).encode()).hexdigest()[:16]
    suffix = ".c" if lang == "c" else ".cpp"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / "know-kernels"):
        try:
            return _build_and_load(cc, source, suffix, flags, folder / f"{name}_{key}.so")
        except OSError:
            continue
        except subprocess.SubprocessError as e:
            detail = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
            warnings.warn(f"building the {name} kernel failed ({detail[-1] if detail else e}): {fallback}",
                          stacklevel=3)
            return None
    return None


def _build_and_load(cc: str, source: str, suffix: str, flags: list[str], so: Path) -> ctypes.CDLL:
    if not so.is_file():
        so.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
            src, out = Path(tmp) / f"kernel{suffix}", Path(tmp) / "kernel.so"
            src.write_text(source)
            subprocess.run([cc, str(src), *flags, "-o", str(out)], check=True, capture_output=True, text=True,
                           timeout=300)  # the source first: libraries in `flags` (-lm) must follow it
            os.replace(out, so)  # atomic: concurrent builders never load a half-written library
    return ctypes.CDLL(str(so))
