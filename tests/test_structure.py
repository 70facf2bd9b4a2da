"""The code's structure: one-way imports inside know/, and cache keys derived from the code a unit runs."""
import shutil
from pathlib import Path

from know import codehash
from know.config import ExperimentCfg
from know.experiment import Row, predict_unit, pretrain_unit, transfer_units

REPO = Path(__file__).resolve().parent.parent


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_know():
    """Counting imports inside functions too: a cycle would make import errors surface only when a job reaches
    them, and is a sign that a concern sits in the wrong module."""
    graph = codehash.import_graph()
    assert len(graph) > 20 and "know.predict" in graph["know.metatrain"] | graph["know.cost"]
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "know"
    shutil.copytree(REPO / "know", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_editing_wnn_changes_every_wnn_predict_key(tmp_path, monkeypatch):
    """The key of a predict unit covers know/wnn.py because know.predict imports it: nothing lists it by hand."""
    root = _copy_package(tmp_path)
    monkeypatch.setattr(codehash, "ROOT", root)
    codehash._code_hash.cache_clear()
    cfg = ExperimentCfg()
    units = [predict_unit(cfg, f, Row("wnn", steps=(1, 2, 3))) for f in cfg.fractions]
    before = [u.key for u in units]
    transfer_before = pretrain_unit(cfg, 1.0).key
    (root / "wnn.py").write_text((root / "wnn.py").read_text() + "\nEPSILON = 1e-5\n")
    codehash._code_hash.cache_clear()
    after = [predict_unit(cfg, f, Row("wnn", steps=(1, 2, 3))).key for f in cfg.fractions]
    assert all(a != b for a, b in zip(after, before))
    assert pretrain_unit(cfg, 1.0).key == transfer_before  # pre-training does not run wnn.py
    codehash._code_hash.cache_clear()


def test_comments_and_docstrings_do_not_change_keys_code_does(tmp_path, monkeypatch):
    root = _copy_package(tmp_path)
    monkeypatch.setattr(codehash, "ROOT", root)
    codehash._code_hash.cache_clear()
    before = codehash.code_hash("know.transfer", root)
    src = (root / "trajectory.py").read_text()
    (root / "trajectory.py").write_text('"""Another docstring."""\n# a comment\n' + src.split('"""', 2)[2])
    codehash._code_hash.cache_clear()
    assert codehash.code_hash("know.transfer", root) == before
    (root / "trajectory.py").write_text(src.replace('KINDS = (', 'KINDS = ("extra", '))
    codehash._code_hash.cache_clear()
    assert codehash.code_hash("know.transfer", root) != before  # param_kinds decides what the probe trains
    codehash._code_hash.cache_clear()


def test_kernel_sources_enter_the_key_of_the_modules_that_load_them(tmp_path):
    root = _copy_package(tmp_path)
    files = {p.name for p in codehash.closure("know.forgetting", root)}
    assert {"lanes.c", "warp.c"} <= files and "known.cpp" not in files
    assert "known.cpp" in {p.name for p in codehash.closure("know.predict", root)}
    before = codehash.code_hash("know.forgetting", root)
    kernel = root / "kernels" / "lanes.c"
    kernel.write_text(kernel.read_text() + "\n/* */ static int unused_marker;\n")
    codehash._code_hash.cache_clear()
    assert codehash.code_hash("know.forgetting", root) != before
    codehash._code_hash.cache_clear()


def test_transfer_units_key_covers_the_trajectory_module():
    """`param_kinds` (know/trajectory.py) decides what the probe phase trains: it is in the transfer closure."""
    files = {p.relative_to(REPO / "know").as_posix() for p in codehash.closure("know.transfer")}
    assert {"transfer.py", "trajectory.py", "data.py", "train.py", "kernels/warp.c"} <= files
    assert "predict.py" not in files and "jobs.py" not in files
    cfg = ExperimentCfg()
    assert len({u.key for _, u in transfer_units(cfg, [Row("naive")])}) == cfg.trials * len(cfg.fractions)


def test_editing_one_task_or_one_loader_leaves_the_other_tables_keys(tmp_path, monkeypatch):
    """T-A's runs do not run the captioning task or the cpu analogs' loaders, so editing those keeps T-A's cache;
    editing the classification task or MNIST's loader does not."""
    from know.profiles import make_config

    root = _copy_package(tmp_path)
    monkeypatch.setattr(codehash, "ROOT", root)
    codehash._code_hash.cache_clear()
    cfg = make_config("cpu", table="table1")
    keys = lambda: [u.key for _, u in transfer_units(cfg, [Row("naive")])] + [pretrain_unit(cfg, 1.0).key]  # noqa
    before = keys()
    for name in ("tasks/captioning.py", "tasks/segmentation.py", "datasets/analogs.py", "datasets/paper.py"):
        (root / name).write_text((root / name).read_text() + "\nEDITED = True\n")
    codehash._code_hash.cache_clear()
    assert keys() == before
    (root / "datasets" / "small.py").write_text((root / "datasets" / "small.py").read_text() + "\nEDITED = 1\n")
    codehash._code_hash.cache_clear()
    after = keys()
    assert all(a != b for a, b in zip(after, before))  # mnist10k and fashion_mnist load through small.py
    codehash._code_hash.cache_clear()
