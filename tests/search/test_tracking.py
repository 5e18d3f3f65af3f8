"""Tests of the MLflow tracker against a real sqlite store: parent/child layout, resume, Pareto tags, registry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from metacompress.search.tracking import NullTracker, Tracker, flatten, make_tracker
from metacompress.spaces.errors import ConfigError

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def tracker(store: str) -> Tracker:
    tracker = Tracker(store, "metacompress-test", strict=True)
    tracker.check_reachable()
    tracker.start_parent("study-a", tags={"task": "digits-cnn", "backend": "optuna"},
                         params={"n_trials": 3, "space": {"bits": [2, 4], "prune": {"low": 0.0, "high": 0.9}}})
    return tracker


def _children(tracker: Tracker) -> list:
    return tracker.client.search_runs([tracker._experiment()],
                                      f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'")


def test_parent_run_has_tags_and_flat_params(tracker: Tracker) -> None:
    run = tracker.client.get_run(tracker.parent_run_id)
    assert run.data.tags["metacompress.study_name"] == "study-a" and run.data.tags["task"] == "digits-cnn"
    assert run.data.params["space.bits"] == "[2, 4]" and run.data.params["space.prune.high"] == "0.9"
    assert run.info.status == "RUNNING"


def test_log_trial_creates_one_nested_child(tracker: Tracker) -> None:
    started = time.perf_counter()
    run_id = tracker.log_trial(0, {"prune": {"conv1": 0.5}, "bits": {"conv1": 4}, "kd_lambda": 0.3},
                               {"accuracy": 0.93, "size_bytes": 4100, "latency_ms": 0.21, "note": "skipped"},
                               epoch_metrics=[{"epoch": 0, "loss": 1.2}, {"epoch": 1, "loss": 0.7}])
    print(f"log_trial: {1000 * (time.perf_counter() - started):.1f} ms")  # for information only
    run = tracker.client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert run.data.tags["metacompress.trial_number"] == "0" and run.info.status == "FINISHED"
    assert run.data.params == {"prune.conv1": "0.5", "bits.conv1": "4", "kd_lambda": "0.3"}
    assert run.data.metrics["accuracy"] == pytest.approx(0.93) and "note" not in run.data.metrics
    history = tracker.client.get_metric_history(run_id, "epoch/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.2), (1, 0.7)]


def test_log_trial_is_idempotent_and_records_failures(tracker: Tracker) -> None:
    first = tracker.log_trial(1, {"kd_lambda": 0.1}, {}, state="FAIL", reason="CUDA out of memory")
    again = tracker.log_trial(1, {"kd_lambda": 0.1}, {}, state="FAIL", reason="CUDA out of memory")
    assert first == again
    run = tracker.client.get_run(first)
    assert run.info.status == "FAILED" and run.data.tags["metacompress.fail_reason"] == "CUDA out of memory"
    assert sum(r.data.tags["metacompress.trial_number"] == "1" for r in _children(tracker)) == 1
    with pytest.raises(ConfigError, match="'state'"):
        tracker.log_trial(9, {}, {}, state="DONE")


def test_many_params_are_batched(tracker: Tracker) -> None:
    params = {f"prune.layer{i}": i / 300 for i in range(250)}
    started = time.perf_counter()
    run_id = tracker.log_trial(2, params, {"accuracy": 0.5, "size_bytes": 100})
    print(f"log_trial with 250 params: {1000 * (time.perf_counter() - started):.1f} ms")
    assert len(tracker.client.get_run(run_id).data.params) == 250


def test_pareto_tags_on_every_child(tracker: Tracker) -> None:
    tracker.mark_pareto({0, 2})
    tags = {r.data.tags["metacompress.trial_number"]: r.data.tags["pareto"] for r in _children(tracker)}
    assert tags == {"0": "true", "1": "false", "2": "true"}


def test_registered_model_and_artifacts(tracker: Tracker, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    extra = tmp_path / "packed.bin"
    extra.write_bytes(b"\x00" * 16)
    uri = tracker.log_pareto_model(0, torch.nn.Linear(4, 2), {"accuracy": 0.93, "size_bytes": 4100},
                                   "metacompress-test-model", extra_artifacts=[extra])
    assert uri == "models:/metacompress-test-model/1"
    version = tracker.client.get_model_version("metacompress-test-model", "1")
    assert version.tags["accuracy"] == "0.93" and version.tags["metacompress.trial_number"] == "0"
    child = tracker._children[0][0]
    assert [a.path for a in tracker.client.list_artifacts(child, "export")] == ["export/packed.bin"]
    summary = tmp_path / "summary.json"
    summary.write_text("{}", encoding="utf-8")
    tracker.log_artifacts([summary])
    assert "summary.json" in [a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)]
    with pytest.raises(ConfigError, match="'number'"):
        tracker.log_pareto_model(99, torch.nn.Linear(1, 1), {}, "metacompress-test-model")


def test_resume_reuses_parent_and_children(tracker: Tracker, store: str) -> None:
    tracker.finish("FINISHED")
    child_0 = tracker._children[0][0]
    # a child left RUNNING by a kill -9: created, never terminated
    orphan = tracker.client.create_run(tracker._experiment(), tags={
        "mlflow.parentRunId": tracker.parent_run_id, "metacompress.trial_number": "3"}).info.run_id
    resumed = Tracker(store, "metacompress-test", strict=True)
    assert resumed.start_parent("study-a", params={"n_trials": 6, "new_key": 1}) == tracker.parent_run_id
    parent = resumed.client.get_run(tracker.parent_run_id)
    assert parent.info.status == "RUNNING" and parent.data.params["n_trials"] == "3"
    assert parent.data.params["new_key"] == "1"
    assert parent.data.tags["metacompress.changed_on_resume"] == "n_trials: 3 -> 6"  # the param keeps its first
    assert resumed.log_trial(0, {}, {"accuracy": 0.1}) == child_0
    assert resumed.client.get_run(child_0).data.metrics["accuracy"] == pytest.approx(0.93)
    assert resumed.log_trial(3, {"kd_lambda": 0.2}, {"accuracy": 0.8, "size_bytes": 10}) == orphan
    assert resumed.client.get_run(orphan).info.status == "FINISHED"
    assert len(_children(resumed)) == 4
    other = resumed.start_parent("study-b")
    assert other != tracker.parent_run_id


def test_unreachable_server_fails_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        Tracker("http://127.0.0.1:9", "x").check_reachable()
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert info.value.field == "tracking_uri" and "reachable MLflow tracking server" in message
    assert message.endswith("Got 'http://127.0.0.1:9'.")
    with pytest.raises(ConfigError, match="directory exists"):
        Tracker("sqlite:////nonexistent/dir/mlflow.db", "x").check_reachable()


def test_a_sqlite_store_that_is_a_folder_or_another_file_fails_fast(tmp_path: Path) -> None:
    """MLflow would retry creating its engine for minutes; an empty file or a real database passes."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "notes.txt").write_text("not a database")
    for name in ("adir", "notes.txt"):
        started = time.perf_counter()
        with pytest.raises(ConfigError, match="sqlite database file") as info:
            Tracker(f"sqlite:///{tmp_path / name}", "x").check_reachable()
        assert info.value.field == "tracking_uri" and time.perf_counter() - started < 5
    (tmp_path / "empty.db").touch()
    Tracker(f"sqlite:///{tmp_path / 'empty.db'}", "x").check_reachable()
    real = Tracker(f"sqlite:///{tmp_path / 'real.db'}", "x")
    real.start_parent("s")
    real.check_reachable()


def test_a_sqlite_file_of_another_application_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """An Optuna storage (``--storage``, an easy mix-up) or any other database: MLflow added its tables to it, or
    failed on Optuna's own migration table (exit 1)."""
    import sqlite3

    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE foo (x INTEGER)")
    for name, kind in (("study.db", "is an Optuna storage, a search's --storage"),
                       ("other.db", "holds another application's tables: foo")):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(ConfigError, match="an MLflow store or a new sqlite file") as info:
            Tracker(f"sqlite:///{tmp_path / name}", "x").check_reachable()
        assert info.value.field == "tracking_uri" and kind in str(info.value)
        assert (tmp_path / name).read_bytes() == before  # nothing written


def test_an_unwritable_sqlite_store_fails_fast(tmp_path: Path) -> None:
    """A read-only folder: refused before any work, not after MLflow's ~100 s of connection retries. Root ignores
    file modes, so as root the check runs in a child without the capabilities that override them."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    uri = f"sqlite:///{folder}/mlflow.db"
    code = ("from metacompress.search.tracking import Tracker\n"
            "from metacompress.spaces import ConfigError\n"
            f"try:\n    Tracker({uri!r}, 'x').check_reachable()\nexcept ConfigError as e:\n    print(e.field, e)\n")
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be enforced here")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *command]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        folder.chmod(0o755)
    assert out.startswith("tracking_uri ") and "database and directory this user can write" in out, out


def test_failures_disable_tracking_unless_strict(tracker: Tracker, store: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    soft = Tracker(store, "metacompress-test")
    soft.start_parent("study-a")

    def boom(*args: object, **kwargs: object) -> None:
        raise ConnectionError("server went away")

    monkeypatch.setattr(soft.client, "log_batch", boom)
    assert soft.log_trial(7, {}, {"accuracy": 0.5}) is None and soft.disabled
    assert soft.log_trial(8, {}, {"accuracy": 0.5}) is None
    monkeypatch.setattr(tracker.client, "set_terminated", boom)
    with pytest.raises(ConnectionError):
        tracker.finish()


def test_null_tracker_does_nothing() -> None:
    null = make_tracker("None", "x")
    assert isinstance(null, NullTracker)
    null.check_reachable()
    assert null.start_parent("s", {"a": 1}, {"b": 2}) is None
    assert null.log_trial(0, {}, {"accuracy": 1.0}) is None
    null.mark_pareto({0})
    null.log_artifacts(["nope.json"])
    assert null.log_pareto_model(0, object(), {}, "m") is None
    null.finish()
    assert isinstance(make_tracker("sqlite:///x.db", "x"), Tracker)


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}, "f": None}) == {"a.b": 1, "a.c.d": [1], "e": {},
                                                                             "f": None}
