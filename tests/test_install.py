"""The package as users get it: a non-editable install, and the pure-PyTorch path with the native kernels off."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent

SMOKE_TABLE = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("error", UserWarning)  # a missing kernel source would warn and fall back: fail instead
    import know, know.kernels
    assert not know.__file__.startswith({repo!r}), know.__file__
    assert know.kernels.source_path("warp").is_file() and know.kernels.source_path("known").is_file()
    from know.experiment import Row
    from know.tables import table_main
    rows = [Row("naive"), Row("known", known="official", steps=(1, 2)), Row("wnn", steps=(1,))]
    sys.exit(table_main("table1", rows, argv=sys.argv[1:]))
""")


def _smoke_args(tmp_path: Path) -> list[str]:
    return ["--profile", "smoke", "--executor", "debug", "--trials=1", "--fractions=[1.0]",
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]


def test_non_editable_install_runs_the_smoke_table(tmp_path, known_weights, wnn_weights):
    """`pip install .` (not editable) into a fresh venv ships the kernel sources and runs Table 1's pipeline from a
    folder outside the repository. The venv borrows this one's third-party packages through a path file (no
    download), which does not activate this venv's editable install of know."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path / "src"  # a copy: setuptools builds in the source tree (build/), which must stay clean
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "results", "figures", "build",
                                                             "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-build-isolation", str(src)], check=True, capture_output=True, text=True,
                   env=dict(os.environ, PIP_NO_INDEX="1"))
    assert (site / "know" / "kernels" / "lanes.c").is_file()
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE_TABLE.format(repo=str(REPO)))
    env = dict(os.environ, KNOW_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "xdg"))  # kernels built afresh
    p = subprocess.run([str(venv / "bin" / "python"), str(script), *_smoke_args(tmp_path)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    df = pd.read_csv(tmp_path / "results" / "table1_smoke.csv")
    assert sorted(set(df["method"])) == ["known_official", "naive", "wnn"]
    assert list((tmp_path / "xdg" / "know" / "kernels").glob("warp_*.so"))  # the CPU augmentation used its kernel


def test_smoke_table1_with_native_kernels_off(tmp_path, known_weights, wnn_weights):
    """KNOW_CKERNEL=0: every stage takes its pure-PyTorch path (augmentation, stacked collection, KNOWN), end to
    end through reproduce/table1.py, and builds no kernel."""
    env = dict(os.environ, KNOW_CKERNEL="0", KNOW_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    p = subprocess.run([sys.executable, "reproduce/table1.py", *_smoke_args(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    df = pd.read_csv(tmp_path / "results" / "table1_smoke.csv")
    assert {"naive", "known_official", "known_ours", "wnn"} <= set(df["method"]) and df["score"].notna().all()
    assert not (tmp_path / "xdg" / "know" / "kernels").exists()


def test_missing_kernel_source_falls_back_with_a_warning(tmp_path, monkeypatch):
    import warnings

    from know import kernels

    monkeypatch.setattr(kernels, "HERE", tmp_path)  # an install without the sources
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.load("warp", ["-O1", "-shared", "-fPIC"], "augmentation uses F.grid_sample") is None
    assert any("not installed: augmentation uses F.grid_sample" in str(w.message) for w in caught)


def test_struct_mirror_of_another_size_is_refused():
    """A ctypes mirror whose size differs from the C struct (a field added on one side) disables the kernel."""
    import ctypes
    import warnings

    from know import lanes

    lib = lanes.library()
    if lib is None:
        import pytest
        pytest.skip("the lanes kernel is not available here (no compiler or KNOW_CKERNEL=0)")

    class Short(ctypes.Structure):
        _fields_ = lanes._Plan._fields_[:-1]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lanes.kernels.check_struct(lib, "sizeof_plan", lanes._Plan, "x")
        assert not lanes.kernels.check_struct(lib, "sizeof_plan", Short, "uses the wide backend")
    assert any("out of date: uses the wide backend" in str(w.message) for w in caught)
