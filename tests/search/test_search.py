"""End-to-end searches on a real task with a real Optuna storage and a real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import optuna
import pytest
import torch
from optuna.trial import TrialState

from metacompress.learners import load_compressed, load_task
from metacompress.learners.meta.proxy import PROXY_NAME, TUNED_PROXY_NAME
from metacompress.search.config import load_config
from metacompress.search.runner import run_search
from metacompress.search.study import counted_trials
from metacompress.spaces import ConfigError


def _children(tracking_uri: str, experiment: str) -> tuple[list, list]:
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("metacompress.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _load_registered(cfg, uri: str):
    """``mlflow.pytorch.load_model(uri)`` from the config's store (``models:/`` URIs resolve in the global one)."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    try:
        return mlflow.pytorch.load_model(uri)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _study(cfg) -> optuna.Study:
    return optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)


def test_search_writes_the_summary_contract_and_mlflow_layout(search_yaml):
    cfg = load_config(search_yaml(n_trials=4))
    summary = run_search(cfg)
    on_disk = json.loads((Path(cfg.out) / "summary.json").read_text())
    assert on_disk["study_name"] == summary["study_name"] == cfg.study_name
    for key in ("task", "backend", "n_trials", "n_complete", "objectives", "teacher", "warm_start",
                "hypervolume", "pareto"):
        assert key in on_disk
    assert on_disk["n_trials"] == 4 and on_disk["n_complete"] + on_disk["n_failed"] == 4
    assert 0.0 <= on_disk["hypervolume"] <= 1.0 and on_disk["pareto"]
    for entry in on_disk["pareto"]:
        assert {"accuracy", "size_bytes", "compression_ratio", "latency_ms"} <= set(entry["metrics"])
        assert entry["model_uri"].startswith("models:/")
    for name in ("pareto.md", "pareto.png", "policies.png", "hypervolume.png"):
        assert (Path(cfg.out) / name).stat().st_size > 0

    parents, children = _children(cfg.tracking_uri, cfg.experiment_name)
    assert len(parents) == 1 and len(children) == 4
    pareto_numbers = {e["number"] for e in on_disk["pareto"]}
    for run in children:
        number = int(run.data.tags["metacompress.trial_number"])
        assert run.data.tags["pareto"] == ("true" if number in pareto_numbers else "false")
        assert "kd_lambda" in run.data.params and any(k.endswith(".bits") for k in run.data.params)
    client = mlflow.MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    versions = client.search_model_versions(f"name = '{cfg.experiment_name}-pareto'")
    assert len(versions) == len(pareto_numbers) and all(v.tags["metacompress.pareto"] == "true" for v in versions)
    assert {v.tags["metacompress.study_name"] for v in versions} == {cfg.study_name}  # told apart from others'
    first = min(versions, key=lambda v: int(v.version))
    loaded = _load_registered(cfg, f"models:/{first.name}/{first.version}")  # a torch.export program
    assert isinstance(loaded, torch.fx.GraphModule)  # no pickle: it loads without metacompress's classes
    entry = next(e for e in on_disk["pareto"] if e["model_uri"].endswith(f"/{first.version}"))
    task = load_task("digits-mlp")
    x = torch.stack([task.val[i][0] for i in range(7)])  # another batch size than the example's
    student = load_compressed(entry["artifact"], task.teacher).eval()
    assert torch.allclose(loaded(x), student(x), atol=1e-4)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"summary.json", "pareto.png", "policies.png", "hypervolume.png", "meta.json"} <= artifacts


def test_feature_distillation_and_the_proximal_term_are_searched_for_real(search_yaml):
    """space.feature_beta and space.prox_mu reach the fine-tuning: the same trial with them minimizes a larger loss,
    and a search over them completes its trials."""
    from metacompress.search.runner import prepare

    cfg = load_config(search_yaml(n_trials=2, tracking_uri="none", space={
        "bits": [8], "epochs": {"low": 1, "high": 1}, "feature_beta": {"low": 0.0, "high": 10.0},
        "prox_mu": {"low": 0.0, "high": 1.0}}))
    p = prepare(cfg)
    assert {"feature_beta", "prox_mu"} <= set(p.distributions)
    params = {name: (d.choices[0] if hasattr(d, "choices") else d.low) for name, d in p.distributions.items()}
    plain = p.objective(params).history[0]["loss"]
    both = p.objective({**params, "feature_beta": 10.0, "prox_mu": 1.0}).history[0]["loss"]
    assert both > plain  # same seed, same batches: only the two terms differ
    summary = run_search(cfg, prepared=p)
    assert summary["n_complete"] == 2


def test_rerun_with_a_larger_budget_continues_without_repeating(search_yaml):
    path = search_yaml(n_trials=2)
    run_search(load_config(path))
    cfg = load_config(path, {"n_trials": 4})
    summary = run_search(cfg)
    trials = counted_trials(_study(cfg))
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert summary["n_complete"] + summary["n_failed"] == 4
    _, children = _children(cfg.tracking_uri, cfg.experiment_name)
    assert sorted(int(r.data.tags["metacompress.trial_number"]) for r in children) == [0, 1, 2, 3]
    versions = mlflow.MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri).search_model_versions(f"name = '{cfg.experiment_name}-pareto'")
    numbers = [v.tags["metacompress.trial_number"] for v in versions]
    assert len(numbers) == len(set(numbers))  # a Pareto model is registered once, however often we resume
    front = {str(e["number"]) for e in summary["pareto"]}
    assert front <= set(numbers)  # a version pushed off the front by the later trials stays, and says so
    assert {v.tags["metacompress.trial_number"]: v.tags["metacompress.pareto"] for v in versions} == \
        {n: str(n in front).lower() for n in numbers}


def test_a_pareto_model_with_quantized_activations_is_registered_as_the_trial_measured_it(search_yaml):
    """The float inference form drops activation quantization: such a student is registered as it is."""
    cfg = load_config(search_yaml(n_trials=1, space={"bits": [8], "act_bits": [4], "epochs": {"low": 1, "high": 1}}))
    summary = run_search(cfg)
    entry = summary["pareto"][0]
    uri = entry["model_uri"]
    loaded = _load_registered(cfg, uri)
    task = load_task("digits-mlp")
    x = torch.stack([task.val[i][0] for i in range(64)])
    student = load_compressed(entry["artifact"], task.teacher).eval()
    assert not isinstance(loaded, torch.fx.GraphModule)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), student(x))


def test_a_version_registered_by_a_search_stopped_before_it_tagged_it_is_tagged_by_the_rerun_not_registered_again(
        search_yaml):
    """A kill between registering a Pareto model and tagging the version left a version with no tags, which the
    rerun did not recognise as its trial's and registered once more."""
    cfg = load_config(search_yaml(n_trials=2))
    run_search(cfg)
    client = mlflow.MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    name = f"{cfg.experiment_name}-pareto"
    before = {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
    stripped = min(before, key=int)
    for key in before[stripped]:
        client.delete_model_version_tag(name, stripped, key)
    run_search(cfg)  # the budget is spent: only the end-of-search sync runs
    after = {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
    assert after == before


@pytest.mark.parametrize(("overrides", "field"), [
    ({"task": {"name": "digits-mlp", "seed": 3}}, "task.seed"),  # another split of the data, another teacher
    ({"seed": 1}, "seed"),
    ({"train": {"latency_repeats": 2, "batch_size": 64}}, "train.batch_size"),
])
def test_a_resume_with_another_task_seed_or_fine_tuning_is_refused_naming_the_field(search_yaml, overrides, field):
    """Trials of one study share one front and one teacher's reference: a resume that changes what they ran with
    is one line naming the field, before the teacher is loaded (a changed space bound: test_cli)."""
    cfg = load_config(search_yaml(n_trials=1, tracking_uri="none"))
    run_search(cfg)
    changed = load_config(search_yaml(n_trials=2, tracking_uri="none", **overrides))
    with pytest.raises(ConfigError) as refused:
        run_search(changed)
    assert refused.value.field == field and "as when study" in str(refused.value)
    assert len(_study(cfg).get_trials()) == 1
    assert run_search(load_config(search_yaml(n_trials=2, tracking_uri="none")))["n_complete"] == 2  # unchanged: on


def test_a_resume_of_a_study_timed_the_old_way_says_its_latencies_are_not_comparable(search_yaml, caplog):
    """A study from before students were timed beside the teacher mixes two kinds of latency once resumed: one
    warning says so; a study timed this way from its start says nothing."""
    from metacompress.learners.measure import LATENCY_TIMING
    from metacompress.search import config
    from metacompress.search.study import ATTR_TIMING

    cfg = load_config(search_yaml(n_trials=1, tracking_uri="none"))
    with caplog.at_level("WARNING"):
        run_search(cfg)
        assert _study(cfg).user_attrs[ATTR_TIMING] == LATENCY_TIMING
        run_search(load_config(search_yaml(n_trials=2, tracking_uri="none")))
    assert "not comparable" not in caplog.text
    _study(cfg)._storage.set_study_user_attr(_study(cfg)._study_id, ATTR_TIMING, None)  # as an older version left it
    config._SAID.clear()
    with caplog.at_level("WARNING"):
        assert run_search(load_config(search_yaml(n_trials=3, tracking_uri="none")))["n_complete"] == 3
    assert "its 2 earlier trials' latencies were timed by an older metacompress" in caplog.text
    assert _study(cfg).user_attrs[ATTR_TIMING] is None  # it stays mixed: every later resume says so too


def test_an_interrupted_search_leaves_its_mlflow_run_killed_not_running_and_the_rerun_finishes_it(search_yaml):
    cfg = load_config(search_yaml(n_trials=3))

    def stop(trial, prepared):  # Ctrl-C (SIGTERM raises the same) after the first trial
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, on_trial_end=stop)
    parents, _ = _children(cfg.tracking_uri, cfg.experiment_name)
    assert [run.info.status for run in parents] == ["KILLED"]
    assert run_search(cfg)["n_complete"] == 3
    parents, _ = _children(cfg.tracking_uri, cfg.experiment_name)
    assert [run.info.status for run in parents] == ["FINISHED"]


def test_the_run_lock_knows_one_sqlite_file_however_its_url_spells_it(tmp_path, monkeypatch):
    """``sqlite:///s.db`` in the file's folder and ``sqlite:////abs/s.db`` are one study: one lock."""
    from metacompress.search.local import lock_path

    monkeypatch.chdir(tmp_path)
    relative = lock_path("sqlite:///s.db", "study", "run")
    assert relative == lock_path(f"sqlite:///{tmp_path}/s.db", "study", "run")
    assert relative != lock_path(f"sqlite:///{tmp_path}/other.db", "study", "run")


def test_warm_start_file_points_run_first_and_only_once(search_yaml, tmp_path):
    points = tmp_path / "points.json"
    cfg0 = load_config(search_yaml())
    from metacompress.learners import describe_layers, load_task

    task = load_task("digits-mlp")
    layers = [i.name for i in describe_layers(task.teacher, task.example_input(2))]
    policy = {"prune_method": "unstructured", "act_bits": None, "kd_lambda": 0.5, "temperature": 4.0,
              "epochs": 1, "lr": 0.003, "feature_beta": 0.0, "prox_mu": 0.0,
              **{f"layers.{n}.prune": 0.5 for n in layers}, **{f"layers.{n}.bits": 4 for n in layers}}
    points.write_text(json.dumps([policy]))
    cfg = load_config(search_yaml(n_trials=2, warm_start={"mode": "auto", "file": str(points)}))
    from metacompress.search.runner import prepare
    from metacompress.search.warmstart import resolve_warm_start

    p = prepare(cfg)
    pts, info = resolve_warm_start("auto", p.space, p.task, n_points=4, seed=0, file=str(points))
    assert info["mode"] == "file" and len(pts) == 1
    run_search(cfg, warm_points=pts, warm_info=info, prepared=p)
    first = counted_trials(_study(cfg))[0]
    assert first.params["bits." + layers[0]] == 4 and first.params["kd_lambda"] == 0.5
    cfg2 = load_config(search_yaml(n_trials=3, warm_start={"mode": "auto", "file": str(points)}))
    run_search(cfg2, warm_points=pts, warm_info=info)
    same = [t for t in counted_trials(_study(cfg2)) if t.params.get("kd_lambda") == 0.5 and
            t.params["bits." + layers[0]] == 4]
    assert len(same) == 1
    assert cfg0.study_name == cfg.study_name


def test_sequential_warm_start_enqueues_k_points_one_at_a_time_and_resumes_without_more(search_yaml):
    from metacompress.search.runner import prepare
    from metacompress.search.warmstart import (
        ATTR_EXPECTED, ATTR_INDEX, ATTR_PREDICTED, SequentialWarmStart, resolve_warm_start)

    cfg = load_config(search_yaml(n_trials=4, tracking_uri="none", warm_start={"mode": "auto"}))
    p = prepare(cfg)
    plan, info = resolve_warm_start("auto", p.space, p.task, n_points=3, seed=0, objectives=cfg.objectives,
                                    sequential=True, reference=p.reference)
    assert isinstance(plan, SequentialWarmStart) and info["sequential"] and "one at a time" in info["reason"]
    summary = run_search(cfg, warm_points=plan, warm_info=info, prepared=p)
    trials = counted_trials(_study(cfg))
    warm = [t for t in trials if ATTR_INDEX in t.user_attrs]
    assert [t.number for t in warm] == [0, 1, 2]  # the first k trials, one distinct candidate each
    assert len({t.user_attrs[ATTR_INDEX] for t in warm}) == 3
    assert all(0.0 <= t.user_attrs[ATTR_PREDICTED] <= 1.5 for t in warm)
    assert summary["warm_start"]["n_points"] == 3 and summary["n_complete"] == 4
    # the summary pairs each warm trial's real accuracy with what the proposer expected of it when it chose it
    # (its model's retention shifted by the residuals so far, within [0, 1]: never above the teacher's 100 %)
    teacher = summary["teacher"]["accuracy"]
    assert [(w["number"], w["accuracy"], w["predicted_accuracy"]) for w in summary["warm_start"]["points"]] == [
        (t.number, t.user_attrs["metrics"]["accuracy"], pytest.approx(t.user_attrs[ATTR_EXPECTED] * teacher))
        for t in warm]
    assert all(0.0 <= t.user_attrs[ATTR_EXPECTED] <= 1.0 for t in warm)
    assert warm[0].user_attrs[ATTR_EXPECTED] == pytest.approx(min(warm[0].user_attrs[ATTR_PREDICTED], 1.0))  # no
    # residual before the first point
    cfg2 = load_config(search_yaml(n_trials=6, tracking_uri="none", warm_start={"mode": "auto"}))
    run_search(cfg2, warm_points=SequentialWarmStart(plan.proposer, 3, p.reference), warm_info=info)
    again = counted_trials(_study(cfg2))
    assert len(again) == 6 and sum(ATTR_INDEX in t.user_attrs for t in again) == 3  # the warm phase was over


@pytest.mark.slow(reason="a two-worker CLI search (~30 s); two workers sharing a study run in the default set")
def test_a_two_worker_cli_search_runs_the_sequential_warm_start(search_yaml, tmp_path):
    from metacompress.search.warmstart import ATTR_INDEX

    path = search_yaml(n_trials=6, parallel={"n_jobs": 2}, tracking_uri="none",
                       warm_start={"mode": "auto", "n_points": 3})
    cmd = [sys.executable, "-m", "metacompress.search.cli", "search", str(path)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "one at a time against the observed front" in done.stdout
    counted = counted_trials(_study(load_config(path)))
    indices = [t.user_attrs[ATTR_INDEX] for t in counted if ATTR_INDEX in t.user_attrs]
    # this process enqueues them, a thread keeping the next one waiting for the forked worker: all k, distinct,
    # and among the first trials (the worker's first ask used to get a TPE draw: 5 of 8 warm points ran)
    assert len(counted) == 6 and len(indices) == 3 and len(set(indices)) == 3
    assert sum(ATTR_INDEX in t.user_attrs for t in counted[:4]) >= 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["warm_start"]["sequential"] is True and summary["n_complete"] == 6
    # the same command again: the budget is spent, so no predictor is fit and no point is announced
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed: 6 of 6 trials finished" in again.stdout and "observed front" not in again.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["warm_start"]["n_points"] == len(indices) and summary["n_complete"] == 6


def test_resumed_warm_start_needs_no_proposals_once_the_budget_or_the_warm_points_are_spent():
    from metacompress.search.study import ATTR_WARM
    from metacompress.search.warmstart import ATTR_INDEX, resumed_warm_start

    def study_with(n_warm: int, n_cold: int, batch: bool = False) -> optuna.Study:
        study = optuna.create_study()
        for i in range(n_warm + n_cold):
            attrs = {"metacompress.warm_start": "auto", ATTR_INDEX: i} if i < n_warm else {}
            study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs=attrs))
        if batch and n_warm:
            study.set_user_attr(ATTR_WARM, "auto")
        return study

    assert resumed_warm_start(study_with(0, 0), 8, 3, sequential=True) is None  # a new study: propose
    assert resumed_warm_start(study_with(2, 0), 8, 3, sequential=True) is None  # 1 sequential point still due
    entry = resumed_warm_start(study_with(3, 1), 8, 3, sequential=True)
    assert entry["mode"] == "auto" and entry["n_points"] == 3 and "warm-start points already exist" in entry["reason"]
    entry = resumed_warm_start(study_with(0, 4), 4, 3, sequential=True)  # a cold study at its budget
    assert entry["mode"] == "off" and entry["n_points"] == 0 and "4 of 4 trials finished" in entry["reason"]
    left_running = study_with(0, 4)  # and a trial a killed search left running, which the rerun re-queues
    left_running.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))
    assert "4 of 4 trials finished" in resumed_warm_start(left_running, 4, 3, sequential=True)["reason"]
    assert resumed_warm_start(study_with(0, 2), 8, 3, sequential=False) is None
    entry = resumed_warm_start(study_with(3, 0, batch=True), 8, 3, sequential=False)
    assert entry["n_points"] == 3 and entry["mode"] == "auto"


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _never_ready(proc: subprocess.Popen, cfg) -> str:
    """Why a kill test's moment never came: the trials it saw, and the search's stderr (the search is stopped)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    try:
        seen = [(t.number, t.state.name, sorted(k for k in t.user_attrs if k.startswith("metacompress.")))
                for t in _study(cfg).get_trials(deepcopy=False)]
    except KeyError:
        seen = "no study"
    return f"exit code {proc.returncode}; trials {seen}; stderr: {proc.stderr.read().decode()[-2000:]}"


def _kill_when_then_rerun(proc: subprocess.Popen, ready, cmd: list[str], cwd: Path, cfg) -> None:
    """``kill -9`` the search ``proc`` once ``ready()`` holds, then rerun ``cmd`` at once; it must succeed."""
    assert _wait_for(ready, 180), _never_ready(proc, cfg)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def test_kill_9_mid_search_then_rerun_finishes_the_budget_exactly(search_yaml, tmp_path):
    path = search_yaml(n_trials=5, space={"bits": [2, 4, 8], "epochs": {"low": 50, "high": 50}})
    cfg = load_config(path)
    cmd = [sys.executable, "-m", "metacompress.search.cli", "search", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def running_after_one_complete() -> bool:
        try:
            study = _study(cfg)
        except KeyError:
            return False
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        # kill while the running trial trains, i.e. once all of its parameters are sampled
        return bool(done) and any(len(t.params) == len(done[0].params) for t in running)

    assert _wait_for(running_after_one_complete, 180), _never_ready(proc, cfg)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = [t for t in _study(cfg).get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    assert len(interrupted) == 1

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = _study(cfg)
    counted = counted_trials(study)
    assert len(counted) == 5
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # the killed trial was re-run once with its own params, not lost and not repeated
    retried = [t for t in counted if t.system_attrs.get("failed_trial") == interrupted[0].number]
    assert len(interrupted[0].params) == len(retried[0].params)
    assert len(retried) == 1 and retried[0].params == interrupted[0].params
    keys = [json.dumps(t.params, sort_keys=True) for t in counted]
    assert len(keys) == len(set(keys))
    _, children = _children(cfg.tracking_uri, cfg.experiment_name)
    assert sorted(int(r.data.tags["metacompress.trial_number"]) for r in children) == sorted(t.number for t in counted)


@pytest.mark.slow(reason="SIGKILL mid warm phase and a rerun (~55 s on 2 busy cores); the default run kills a search mid-budget")
def test_kill_9_in_the_sequential_warm_phase_then_rerun_goes_on_with_the_same_points(search_yaml, tmp_path):
    from metacompress.search.warmstart import ATTR_INDEX

    path = search_yaml(n_trials=5, tracking_uri="none", warm_start={"mode": "auto", "n_points": 3},
                       space={"bits": [2, 4, 8], "epochs": {"low": 120, "high": 120}})  # a window of seconds
    cfg = load_config(path)
    cmd = [sys.executable, "-m", "metacompress.search.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def second_warm_point_running() -> bool:
        try:
            trials = _study(cfg).get_trials(deepcopy=False)
        except KeyError:
            return False
        return (len(trials) == 2 and trials[0].state == TrialState.COMPLETE
                and trials[1].state == TrialState.RUNNING and ATTR_INDEX in trials[1].user_attrs)

    _kill_when_then_rerun(proc, second_warm_point_running, cmd, tmp_path, cfg)
    study = _study(cfg)
    counted = counted_trials(study)
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("metacompress.interrupted")]
    assert len(counted) == 5 and len(interrupted) == 1
    # the interrupted warm point ran again once, and the sequence went on to k distinct points, not k + 1
    warm = [t.user_attrs[ATTR_INDEX] for t in counted if ATTR_INDEX in t.user_attrs]
    assert warm[:2] == [counted[0].user_attrs[ATTR_INDEX], interrupted[0].user_attrs[ATTR_INDEX]]
    assert len(warm) == 3 and len(set(warm)) == 3


@pytest.mark.slow(reason="two worker processes killed and rerun (~25 s); the default run kills a single-process search")
def test_kill_9_of_a_two_worker_search_takes_its_workers_down_and_the_rerun_finishes(search_yaml, tmp_path):
    path = search_yaml(n_trials=6, parallel={"n_jobs": 2}, tracking_uri="none",
                       space={"bits": [2, 4, 8], "epochs": {"low": 50, "high": 50}})
    from metacompress.learners import load_task
    from metacompress.search.runner import build_space
    from metacompress.spaces.adapters import to_optuna

    cfg = load_config(path)
    n_params = len(to_optuna(build_space(cfg, load_task("digits-mlp"))))
    cmd = [sys.executable, "-m", "metacompress.search.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def both_workers_training() -> bool:
        try:
            trials = _study(cfg).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:
            return False
        return len(trials) == 2 and all(len(t.params) == n_params for t in trials)

    # rerun at once: an orphaned worker would still hold the run lock (exit code 2) and keep running trials
    _kill_when_then_rerun(proc, both_workers_training, cmd, tmp_path, cfg)
    study = _study(cfg)
    counted = counted_trials(study)
    assert len(counted) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("metacompress.interrupted")]
    assert len(interrupted) == 2
    retried = {t.system_attrs.get("failed_trial") for t in counted}
    assert {t.number for t in interrupted} <= retried


@pytest.mark.parametrize("threads", [1, 2], ids=["forked", "spawned"])
def test_two_local_worker_processes_share_the_study_without_overshooting(search_yaml, threads):
    from metacompress.search.runner import start_method

    train = {"latency_repeats": 2, "batch_size": 128, "num_threads": threads}
    cfg = load_config(search_yaml(n_trials=5, parallel={"n_jobs": 2}, tracking_uri="none", train=train))
    # one torch thread per worker: forked on Linux (the task is shared); more threads: spawned (OpenMP and fork)
    assert start_method(cfg) == ("fork" if threads == 1 and sys.platform.startswith("linux") else "spawn")
    run_search(cfg)
    study = _study(cfg)
    counted = counted_trials(study)
    assert len(counted) == 5 and len(study.get_trials()) == 5
    keys = [json.dumps(t.params, sort_keys=True) for t in counted]
    assert len(set(keys)) == 5  # each worker samples with its own seed
    assert all(Path(t.user_attrs["artifact"]).exists() for t in counted if t.state == TrialState.COMPLETE)


def test_a_finished_search_joins_the_history_the_next_warm_start_learns_from(search_yaml):
    from metacompress.learners.meta import History

    cfg = load_config(search_yaml(n_trials=3))
    run_search(cfg)
    history = History.from_mlflow(cfg.tracking_uri)
    assert len(history) == 3 and history.tasks == ["digits-mlp"]
    for name in (PROXY_NAME, TUNED_PROXY_NAME):  # every trial records its accuracy before
        proxy = history.frame[name]  # fine-tuning and after its first steps
        assert proxy.notna().all() and ((proxy >= 0) & (proxy <= 1.5)).all()
    assert len(History.collect(cfg.tracking_uri)) == len(History.shipped()) + 3


def test_a_previous_summary_or_a_list_of_params_can_seed_a_search(search_yaml, tmp_path):
    """warm_start.file takes a previous summary.json (its Pareto policies) or space params; a bad entry is named."""
    from metacompress.search.runner import prepare
    from metacompress.search.warmstart import load_points, resolve_warm_start

    first = load_config(search_yaml(n_trials=2, tracking_uri="none", study_name="first"))
    summary = run_search(first)
    p = prepare(load_config(search_yaml(n_trials=2, tracking_uri="none", study_name="second")))
    from_summary = load_points(Path(first.out) / "summary.json", p.space)
    assert len(from_summary) == len(summary["pareto"])
    assert [p.space.decode(x).to_dict() for x in from_summary] == [e["params"] for e in summary["pareto"]]
    params = tmp_path / "params.json"
    params.write_text(json.dumps(from_summary[:1]))
    assert load_points(params, p.space) == from_summary[:1]
    # what `metacompress suggest --json` prints: entries with their params and predictions
    params.write_text(json.dumps([{"params": from_summary[0], "predicted": {"accuracy_retention": 0.9}}]))
    assert load_points(params, p.space) == from_summary[:1]
    params.write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(ConfigError, match=r"warm_start.file\[0\]: The 'params' keys must be one of .* Got 'foo'"):
        load_points(params, p.space)
    params.write_text("[]")  # nothing to seed with: a cold start that says so
    points, info = resolve_warm_start(str(params), p.space, p.task, n_points=4, seed=0)
    assert points == [] and info["reason"] == f"cold start: {params} holds no policies"
    for content, field in (("{not json", "warm_start.file"), ('{"a": 1}', "warm_start.file"),
                           ("[3]", "warm_start.file[0]"), (json.dumps([{**from_summary[0], "kd_lambda": 7}]),
                                                           "warm_start.file[0]")):
        params.write_text(content)
        with pytest.raises(ConfigError) as err:
            load_points(params, p.space)
        assert err.value.field == field


@pytest.mark.parametrize("storage", ["study.log", "journal:///{tmp}/j/study"])
def test_a_journal_file_storage_runs_and_resumes_a_search(search_yaml, tmp_path, storage):
    """The storage needs no database: a journal file holds the study, and a rerun continues it."""
    url = storage.format(tmp=tmp_path) if "{tmp}" in storage else str(tmp_path / storage)
    cfg = load_config(search_yaml(n_trials=2, tracking_uri="none", storage=url))
    first = run_search(cfg)
    again = run_search(cfg)  # the budget is spent: nothing runs
    assert first["n_complete"] + first["n_failed"] == again["n_complete"] + again["n_failed"] == 2
    more = load_config(search_yaml(n_trials=3, tracking_uri="none", storage=url))
    summary = run_search(more)
    assert summary["n_complete"] + summary["n_failed"] == 3
    from metacompress.search.study import make_storage

    trials = optuna.load_study(study_name=more.study_name, storage=make_storage(url)).get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)


def test_a_factory_task_is_named_by_the_config_when_it_names_one(search_yaml, tmp_path, monkeypatch):
    """The config's ``task.name`` names the task in the history (as the README's example says), not the name the
    factory returns; without one, the factory's name stays."""
    from metacompress.search.runner import load_config_task

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    task = {"factory": "faulty_task:make_task", "kwargs": {"counter": str(tmp_path / "counter")}}
    assert load_config_task(load_config(search_yaml(task={**task, "name": "my-digits"}))).name == "my-digits"
    assert load_config_task(load_config(search_yaml(task=task))).name == "faulty-digits"


def test_a_policy_file_of_another_space_runs_its_nearest_policies_and_says_so(tmp_path, caplog):
    """A wider search's summary.json read into a narrower space: each policy is moved to the nearest one this space
    holds (as before), and one warning names what changed (it was silent)."""
    from metacompress.learners import describe_layers, load_task
    from metacompress.search import config
    from metacompress.search.warmstart import load_points
    from metacompress.spaces import CompressionPolicy, CompressionSpace, Ordinal

    task = load_task("digits-mlp")
    layers = describe_layers(task.teacher, task.example_input(2))
    space = CompressionSpace(layers, bits=Ordinal((4, 8)))
    inside = CompressionPolicy.uniform([i.name for i in layers], 0.3, 4).to_dict()
    outside = CompressionPolicy.uniform([i.name for i in layers], 0.3, 3).to_dict()  # 3 bits: not in (4, 8)
    file = tmp_path / "summary.json"
    file.write_text(json.dumps({"pareto": [{"params": inside}, {"params": outside}]}))
    config._SAID.clear()
    with caplog.at_level("WARNING"):
        points = load_points(file, space)
    assert [space.decode(p).to_dict() == inside for p in points] == [True, True]  # 3 bits ran as 4
    assert f"warm_start.file: 1 of 2 policies of {file} run as the nearest policy this space holds (bits changed)" \
        in caplog.text
