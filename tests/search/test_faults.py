"""Fault tolerance: failing trials, a tracking outage, kill -9 of a retrain job, a Ray node lost mid-sweep.

The fast test runs a search whose task plugin (``faulty_task.py``) makes trials raise, give NaN and pass their time
limit. The slow ones reuse the scenarios of ``experiments/bench_faults.py`` (which measures them at full size)
with smaller parameters and assert that nothing is lost or duplicated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest

from metacompress.search.config import load_config
from metacompress.search.runner import run_search

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "experiments"))


def test_failing_trials_are_recorded_with_their_reason_and_the_search_goes_on(search_yaml, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    task = {"factory": "faulty_task:make_task",
            "kwargs": {"counter": str(tmp_path / "counter"), "schedule": ["raise", "nan", "sleep", "ok"],
                       "sleep_s": 3.0}}
    cfg = load_config(search_yaml(task=task, n_trials=4, train={"latency_repeats": 2, "batch_size": 128,
                                                               "trial_timeout_s": 2.5}))
    summary = run_search(cfg)
    assert summary["n_failed"] == 3 and summary["n_complete"] == 1 and summary["pareto"]
    client = mlflow.MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    reasons = sorted(r.data.tags.get("metacompress.fail_reason", "") for r in children
                     if r.info.status == "FAILED")
    assert len(children) == 4 and len(reasons) == 3
    assert "injected failure" in reasons[0] and "non-finite" in reasons[1] and "time limit" in reasons[2]
    names = {frozenset(r.data.params) for r in children}  # a failed trial's run names its policy as a finished one's
    from metacompress.learners.meta import History

    assert History.collect(cfg.tracking_uri).skipped["failed trial"] == 3  # what the history says it left out
    assert len(names) == 1 and {"kd_lambda", "layers.0.fc1.prune", "layers.0.fc1.bits"} <= next(iter(names))


def test_a_tracking_store_that_stays_down_is_flushed_by_a_rerun(search_yaml, tmp_path, caplog):
    """The store fails from the first trial's end on (its client raises, as an unreachable server's would): the
    search still ends (study, summary) and says to rerun; the rerun logs every trial. The real-server version
    of this is the slow test below."""
    from metacompress.search.runner import make_tracker

    cfg = load_config(search_yaml(n_trials=3))
    tracker = make_tracker(cfg)
    real = {}

    def down(*_a, **_k):
        raise ConnectionError("tracking server unreachable")

    def break_store(trial, _p) -> None:
        if trial.number == 0:
            for name in ("create_run", "log_batch", "search_runs", "set_terminated", "log_artifact", "log_artifacts",
                         "update_run", "search_model_versions", "set_model_version_tag"):
                real[name] = getattr(tracker.client, name)
                setattr(tracker.client, name, down)

    summary = run_search(cfg, on_trial_end=break_store, tracker=tracker, flush_timeout_s=0.5)
    assert summary["tracking_flushed"] is False and summary["n_complete"] + summary["n_failed"] == 3
    assert any("rerun the same command" in r.getMessage() for r in caplog.records)
    again = run_search(cfg)
    assert again["tracking_flushed"] is True
    client = mlflow.MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["metacompress.trial_number"]) for r in children) == [0, 1, 2]
    assert all(r.info.status in ("FINISHED", "FAILED") for r in children)
    assert all(e["model_uri"] for e in again["pareto"])


@pytest.mark.slow(reason="starts and stops a real mlflow server three times (~3-5 min on 2 busy cores)")
def test_tracking_server_outage_loses_nothing():
    import bench_faults

    result = bench_faults.tracking_outage()
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["down_past_end"]["warning_line"] and result["down_past_end"]["rerun_exit"] == 0


@pytest.mark.slow(reason="kills a retrain job three times and reruns it (~2-3 min)")
def test_kill_9_of_a_retrain_job_loses_and_duplicates_nothing():
    import bench_faults

    result = bench_faults.kill9(runs=3, seed=1, n_trials=8)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["promotions"] == 1, result
    assert result["final_exit"] == 0 and result["pareto_models"]


@pytest.mark.slow(reason="a two-node Ray cluster, the worker node removed mid-sweep (~3 min)")
@pytest.mark.ray
def test_ray_worker_node_loss_retries_every_trial():
    pytest.importorskip("ray")
    import bench_faults

    result = bench_faults.ray_node_loss()
    assert result["worker_removed_mid_sweep"] and result["exit"] == 0, result
    assert result["lost"] == 0 and result["duplicated"] == 0, result


@pytest.mark.slow(reason="a Tune experiment killed with SIGKILL and restored with Tuner.restore (~2-3 min)")
@pytest.mark.ray
def test_tune_experiment_killed_and_restored_finishes():
    pytest.importorskip("ray")
    import bench_faults

    result = bench_faults.tune_restore(n=3)
    assert result["killed_mid_experiment"] and result["restore_exit"] == 0, result
    assert result["lost"] == 0 and result["duplicated"] == 0, result
