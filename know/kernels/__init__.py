"""Native kernels, all in this folder, built on first use by one function (`load`).

- `known.cpp`: the fused KNOWN predictor (`know.fastknown`),
- `lanes.c`: 16 SimpleNets trained in SIMD lanes (`know.lanes`),
- `warp.c`: the augmentation's nearest-neighbour affine warp (`know.data`).

`load(name, flags, fallback)` compiles `<name>.c` / `<name>.cpp` once per machine into `$XDG_CACHE_HOME/know/kernels`
(default ~/.cache/know/kernels; a temporary folder when that is not writable), named by a hash of the source, compiler,
flags and CPU: the code is built with -march=native, so a cache shared by several machines never mixes them. The
write is atomic, so concurrent jobs never load a half-written library. Every kernel has a PyTorch path with the same
results; `load` returns None and the caller takes it when `$KNOW_CKERNEL=0`, when no compiler is found, when the build
fails, or when the source is not installed (each with a warning). Structs shared with Python through ctypes are
checked by size at load time (`check_struct`), so a field added on one side only is caught instead of corrupting
memory. No new CPU-only kernels: speed work goes to the GPU path and to PyTorch-native code.

Cache keys (`know.jobs`) include the source of every kernel a module loads by a literal `kernels.load("<name>", ...)`.
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
HERE = Path(__file__).resolve().parent
COMPILERS = {".c": ("CC", ("cc", "gcc", "clang")), ".cpp": ("CXX", ("g++", "c++", "clang++"))}


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def source_path(name: str) -> Path:
    """The source file of kernel `name` (`<name>.c` or `<name>.cpp` in this folder)."""
    for suffix in COMPILERS:
        if (HERE / f"{name}{suffix}").is_file():
            return HERE / f"{name}{suffix}"
    return HERE / f"{name}.c"


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


def compiler(suffix: str) -> str | None:
    env, names = COMPILERS[suffix]
    return os.environ.get(env) or next((p for p in map(shutil.which, names) if p), None)


def load(name: str, flags: list[str], fallback: str) -> ctypes.CDLL | None:
    """Kernel `name` built with `flags`, or None; `fallback` ends the warning ("...: <fallback>")."""
    if not enabled():
        return None
    path = source_path(name)
    try:
        source = path.read_text()
    except OSError:
        warnings.warn(f"kernel source {path} is not installed: {fallback}", stacklevel=2)
        return None
    cc = compiler(path.suffix)
    if cc is None:
        warnings.warn(f"no {'C++' if path.suffix == '.cpp' else 'C'} compiler found: {fallback}", stacklevel=2)
        return None
    key = hashlib.sha256("\n".join([source, cc, *flags, cpu_signature()]).encode()).hexdigest()[:16]
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / "know-kernels"):
        try:
            return _build_and_load(cc, source, path.suffix, flags, folder / f"{name}_{key}.so")
        except OSError:
            continue
        except subprocess.SubprocessError as e:
            detail = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
            warnings.warn(f"building the {name} kernel failed ({detail[-1] if detail else e}): {fallback}",
                          stacklevel=2)
            return None
    return None


def check_struct(lib: ctypes.CDLL, symbol: str, struct: type[ctypes.Structure], fallback: str) -> bool:
    """Whether `lib.<symbol>()` (the C side's sizeof) equals ctypes' size of `struct`; warns when not."""
    fn = getattr(lib, symbol)
    fn.restype, fn.argtypes = ctypes.c_long, []
    c_size, py_size = fn(), ctypes.sizeof(struct)
    if c_size != py_size:
        warnings.warn(f"{struct.__name__} is {py_size} bytes in Python but {c_size} in C ({symbol}): the ctypes "
                      f"mirror is out of date: {fallback}", stacklevel=2)
    return c_size == py_size


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
