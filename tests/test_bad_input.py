"""Bad input through the command lines: one error line naming the problem and the fix, a non-zero exit status, no
traceback, and nothing overwritten (every output path holds a sentinel before the run and still holds it after)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SENTINEL = b"sentinel: must survive a failed run"


def run(args, tmp_path, **env) -> tuple[int, str]:
    """Run `know ...` or a script; returns (exit status, stderr)."""
    cmd = [sys.executable, "-m", "know", *args] if not args[0].endswith(".py") else [sys.executable, *args]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "KNOW_OFFLINE": "1", "KNOW_CACHE": str(tmp_path / "cache"), **env})
    return p.returncode, p.stderr


def one_error(status: int, stderr: str, *needles: str) -> str:
    """The single error line (progress bars and argparse's usage aside), checked for each needle."""
    assert status != 0, stderr
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def sentinel(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SENTINEL)
    return path


def untouched(*paths: Path):
    for p in paths:
        assert p.read_bytes() == SENTINEL, p
        assert not [q for q in p.parent.iterdir() if q.name.endswith(".tmp")], "temp file left behind"


# ---------------------------------------------------------------- trajectories to break

@pytest.fixture(scope="module")
def good_traj(tmp_path_factory) -> Path:
    """A valid 5-session trajectory of debugnet (what `know forget` writes), made in milliseconds."""
    from know.models import create_model
    from know.trajectory import Trajectory

    torch.manual_seed(0)
    model = create_model("debugnet", num_classes=4, in_chans=1, img_size=16)
    base = model.state_dict()
    states = [{k: v + 0.01 * k_ * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
              for k_ in range(5)]
    meta = {"architecture": "debugnet", "model_kwargs": {}, "in_chans": 1, "img_size": 16, "num_classes": 4,
            "dataset": "debug", "rate": 0.5}
    return Trajectory.from_sessions(states, model=model, meta=meta).save(
        tmp_path_factory.mktemp("traj") / "good.safetensors")


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a safetensors file, changing its tensors with `change(tensors)` (metadata kept): bypasses validation."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        md, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, str(dst), metadata=md)
    return dst


def first_param(tensors) -> str:
    return next(k for k in tensors if k.startswith("param/") and tensors[k].dim() >= 3)


def predict_args(traj: Path, out: Path, method="taskvector"):
    return ["predict", "--trajectory", str(traj), "--out", str(out), "--method", method]


# ---------------------------------------------------------------- missing dataset

def test_missing_dataset_names_the_folder_and_how_to_get_it(tmp_path):
    out = sentinel(tmp_path / "traj.safetensors")
    empty = tmp_path / "no-data"
    line = one_error(*run(["forget", "--out", str(out), "--dataset=cifar10", f"--data-root={empty}"], tmp_path),
                     str(empty), "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert "KNOW_DATA" in line or "--data-root" in line
    untouched(out)


# ---------------------------------------------------------------- unknown names

@pytest.mark.parametrize("kind, args, needles", [
    ("model", ["forget", "--dataset=debug", "--model=resnet9000"], ["unknown model 'resnet9000'", "debugnet", "resnet18_know"]),
    ("dataset", ["forget", "--dataset=imagenet21k"], ["unknown dataset 'imagenet21k'", "cifar10", "fashion_mnist"]),
    ("config key", ["forget", "--learning_rate=0.1"], ["learning_rate", "lr"]),
])
def test_unknown_name_lists_the_known_ones(tmp_path, kind, args, needles):
    out = sentinel(tmp_path / "traj.safetensors")
    one_error(*run([*args, "--out", str(out)], tmp_path), *needles)
    untouched(out)


def test_unknown_method_lists_the_known_ones(tmp_path, good_traj):
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run(predict_args(good_traj, step.parent, method="magic"), tmp_path),
              "unknown prediction method 'magic'", "known", "taskvector", "tsv")
    untouched(step)


@pytest.mark.parametrize("args, needles", [
    (["--profile", "fast"], ["invalid choice: 'fast'", "smoke", "cpu", "paper"]),
    (["--profile", "smoke", "--forget.nope=1"], ["unknown config key 'forget.nope'", "lr"]),
    (["--profile", "smoke", "--trials=many"], ["--trials", "invalid int value"]),
])
def test_unknown_profile_or_key_of_a_reproduce_script(tmp_path, args, needles):
    csv = sentinel(tmp_path / "results" / "table1_smoke.csv")
    one_error(*run(["reproduce/table1.py", *args, "--executor", "debug", "--results-dir", str(csv.parent)],
                   tmp_path), *needles)
    untouched(csv)
    assert not (tmp_path / "cache").exists()  # failed before any unit ran


# ---------------------------------------------------------------- trajectories of mismatched shapes or models

def test_trajectory_whose_shapes_disagree_with_its_metadata(tmp_path, good_traj):
    def cut(t):
        k = first_param(t)
        t[k] = t[k][:, :1].clone()

    bad = rewrite(good_traj, tmp_path / "ragged.safetensors", cut)
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run(predict_args(bad, step.parent), tmp_path), str(bad), "has shape", "metadata says")
    untouched(step)


def test_trajectory_for_another_model(tmp_path, good_traj):
    out = sentinel(tmp_path / "transfer.json")
    one_error(*run(["transfer", "--checkpoint", str(good_traj), "--model", "simplenet", "--dataset=debug",
                    "--out", str(out)], tmp_path), "simplenet", "right architecture")
    untouched(out)


def test_sessions_of_different_models_do_not_stack():
    from know.errors import TrajectoryError
    from know.models import create_model
    from know.trajectory import Trajectory

    a = create_model("debugnet", num_classes=4, in_chans=1, img_size=16).state_dict()
    b = create_model("debugnet", num_classes=10, in_chans=1, img_size=16).state_dict()
    with pytest.raises(TrajectoryError, match=r"shape .* in Θ1 but .* in Θ0"):
        Trajectory.from_sessions([a, b, a])
    with pytest.raises(TrajectoryError, match="different tensor names"):
        Trajectory.from_sessions([a, {"x": torch.zeros(1)}, a])


def test_too_short_trajectory_for_the_method(tmp_path, good_traj):
    from know.trajectory import Trajectory

    short = Trajectory.load(good_traj).tail(2).save(tmp_path / "short.safetensors")
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run(predict_args(short, step.parent, method="known"), tmp_path), "sessions")
    untouched(step)


# ---------------------------------------------------------------- NaN / Inf

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_trajectory(tmp_path, good_traj, value):
    def poison(t):
        k = first_param(t)
        t[k] = t[k].clone()
        t[k][2].view(-1)[0] = value

    bad = rewrite(good_traj, tmp_path / "poisoned.safetensors", poison)
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run(predict_args(bad, step.parent), tmp_path), str(bad), "NaN/Inf", "session Θ2", "re-create")
    untouched(step)
    mt = sentinel(tmp_path / "mt" / "summary.json")
    one_error(*run(["meta-train", "--trajectories", str(bad), "--out", str(mt.parent), "--epochs=1"], tmp_path),
              "NaN/Inf")
    untouched(mt)


# ---------------------------------------------------------------- truncated files

def test_truncated_trajectory(tmp_path, good_traj):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(good_traj.read_bytes()[: good_traj.stat().st_size // 2])
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run(predict_args(bad, step.parent), tmp_path), str(bad), "truncated")
    untouched(step)


def test_truncated_official_h5_weights(tmp_path, good_traj, known_weights):
    src = known_weights
    weights = tmp_path / "weights"
    weights.mkdir()
    for f in src.glob("KNOWN_*.h5"):
        (weights / f.name).write_bytes(f.read_bytes()[:4096])
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run([*predict_args(good_traj, step.parent, method="known"), "--known", "official"], tmp_path,
                   KNOW_WEIGHTS_DIR=str(weights)), "KNOWN_", "truncated or corrupted", "replace it")
    untouched(step)


def test_truncated_known_safetensors(tmp_path, good_traj):
    from know.known import KNOWN, save_known

    good = save_known({"conv": KNOWN(), "fc": KNOWN(), "bias": KNOWN()}, tmp_path / "known.safetensors")
    bad = tmp_path / "known_truncated.safetensors"
    bad.write_bytes(good.read_bytes()[:100])
    step = sentinel(tmp_path / "pred" / "step1.safetensors")
    one_error(*run([*predict_args(good_traj, step.parent, method="known"), "--known", str(bad)], tmp_path),
              str(bad), "not a readable KNOWN safetensors file")
    untouched(step)


def test_truncated_cache_entry_is_recomputed_not_trusted(tmp_path):
    """The unit cache: a truncated record or output makes the unit run again (more cases in test_faults.py)."""
    from know.jobs import Runner, Unit, load_result

    u = Unit("a", "tests.jobfns:add", {"x": 3}, label="a")
    runner = Runner(tmp_path, executor="debug", log=lambda *_: None)
    runner.run([u])
    record = u.dir(tmp_path) / "result.json"
    record.write_bytes(record.read_bytes()[:-10])
    assert load_result(u.dir(tmp_path)) is None
    assert runner.run([u])[u.key]["value"] == {"total": 3}


# ---------------------------------------------------------------- folders that cannot be written

@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_results_directory_not_writable(tmp_path, where):
    # Tests run as root, which ignores permission bits: use paths no one can create.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    results = blocker / "results" if where == "under a file" else Path("/proc/know-results")
    one_error(*run(["reproduce/table1.py", "--profile", "smoke", "--executor", "debug", "--results-dir",
                    str(results), "--cache-dir", str(tmp_path / "cache")], tmp_path),
              "results directory", str(results), "not writable", "--results-dir")
    assert not (tmp_path / "cache" / "pretrain").exists()  # failed before any compute


def test_cache_directory_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    csv = sentinel(tmp_path / "results" / "table1_smoke.csv")
    one_error(*run(["reproduce/table1.py", "--profile", "smoke", "--executor", "debug", "--results-dir",
                    str(csv.parent), "--cache-dir", str(blocker / "cache")], tmp_path),
              "cache folder", "not writable", "--cache-dir")
    untouched(csv)


def test_require_writable_passes_for_a_normal_folder(tmp_path):
    from know.errors import KnowError
    from know.jobs import require_writable

    assert require_writable(tmp_path / "new" / "dir").is_dir()
    with pytest.raises(KnowError, match="not writable"):
        require_writable(Path("/proc/nope"))
    shutil.rmtree(tmp_path / "new")


@pytest.mark.parametrize("cmd", ["forget", "collect", "transfer"])
def test_unwritable_out_fails_before_computing(tmp_path, cmd, good_traj):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / ("traj.safetensors" if cmd == "forget" else "out")
    args = {"forget": ["forget", "--out", str(out), "--model=debugnet", "--dataset=debug", "--pretrain_epochs=50"],
            "collect": ["collect", "--out", str(out), "--models=[\"debugnet\"]", "--datasets=[\"debug\"]"],
            "transfer": ["transfer", "--checkpoint", str(good_traj), "--out", str(out / "r.json"),
                         "--dataset=debug"]}[cmd]
    one_error(*run(args, tmp_path), "output folder", "not writable", "--out")
    assert blocker.read_text() == "x"
