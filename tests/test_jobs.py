
import pytest

from know.jobs import Runner, Unit, UnitsFailed, load_result


def chain(x0=1, x1=10):
    a = Unit("a", "tests.jobfns:add", {"x": x0}, label="a")
    b = Unit("b", "tests.jobfns:add", {"x": x1}, deps={"a": a}, label="b")
    return a, b


def calls(cache):
    f = cache / "calls.log"
    return f.read_text().split() if f.exists() else []


@pytest.mark.parametrize("executor", ["debug", "local"])
def test_chain_runs_and_rerun_skips(tmp_path, executor):
    a, b = chain()
    runner = Runner(tmp_path, executor=executor, parallel=2, poll_s=0.1, log=lambda *_: None)
    res = runner.run([b])
    assert res[b.key]["value"] == {"total": 11} and res[a.key]["value"] == {"total": 1}
    assert len(calls(tmp_path)) == 2
    runner.run([b])
    assert len(calls(tmp_path)) == 2  # everything cached


def test_changed_config_recomputes_only_what_changed(tmp_path):
    runner = Runner(tmp_path, executor="debug", log=lambda *_: None)
    a, b = chain()
    runner.run([b])
    a2, b2 = chain(x1=20)
    assert a2.key == a.key and b2.key != b.key
    res = runner.run([b2])
    assert res[b2.key]["value"] == {"total": 21}
    assert calls(tmp_path) == [a.key, b.key, b2.key]


def test_failure_reported_others_finish_dependents_blocked(tmp_path):
    bad = Unit("bad", "tests.jobfns:boom", {}, label="the-bad-one")
    after_bad = Unit("c", "tests.jobfns:add", {"x": 1}, deps={"bad": bad}, label="after-bad")
    good = Unit("g", "tests.jobfns:add", {"x": 5}, label="good")
    runner = Runner(tmp_path, executor="debug", log=lambda *_: None)
    with pytest.raises(UnitsFailed) as e:
        runner.run([after_bad, good])
    msg = str(e.value)
    assert "the-bad-one: ValueError: planned failure" in msg and "after-bad: a dependency failed" in msg
    assert "log:" in msg
    assert load_result(good.dir(tmp_path))["value"] == {"total": 5}


def test_corrupt_result_is_recomputed(tmp_path):
    a, _ = chain()
    runner = Runner(tmp_path, executor="debug", log=lambda *_: None)
    runner.run([a])
    (a.dir(tmp_path) / "result.json").write_text('{"ok": true, "value": {"total": 99')  # truncated
    assert load_result(a.dir(tmp_path)) is None
    assert runner.run([a])[a.key]["value"] == {"total": 1}
    assert len(calls(tmp_path)) == 2


def test_git_commit_is_dirty_for_code_not_for_the_runs_own_outputs(tmp_path):
    import subprocess

    from know.jobs import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for name in ("know/x.py", "results/t.csv", "figures/t.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    clean = git_commit(tmp_path)
    assert clean and "dirty" not in clean
    (tmp_path / "results/t.csv").write_text("b")
    (tmp_path / "figures/t.png").write_text("b")
    assert git_commit(tmp_path) == clean  # a reproduce run rewrote its tracked outputs
    (tmp_path / "know/x.py").write_text("b")
    assert git_commit(tmp_path) == clean + "-dirty"
