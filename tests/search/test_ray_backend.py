"""The Ray Tune backend on a real (local or two-node) Ray: one study shared with the local backend, MLflow in sync.

Each test starts Ray itself (``num_cpus=2`` locally, or a ``ray.cluster_utils.Cluster`` of two one-CPU nodes) and
shuts it down. Trials are tiny (digits-mlp, 1-2 epochs, latency_repeats 2); most of the time is Ray's start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from metacompress.search.config import load_config  # noqa: E402
from metacompress.search.runner import prepare, run_search  # noqa: E402
from metacompress.search.study import counted_trials  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
_ATTRS = {"metrics", "history", "policy", "timing", "artifact"}


def _ray_section(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"storage_path": str(tmp_path / "ray_results"), "max_concurrent": 2, "cpus_per_trial": 1, **kw}


def _children(tracking_uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags]


def _check_study(cfg: Any, n: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``n`` counted trials numbered 0..n-1, recorded like local ones, none repeated."""
    trials = counted_trials(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage))
    assert [t.number for t in trials] == list(range(n))
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert _ATTRS <= set(t.user_attrs) and Path(t.user_attrs["artifact"]).is_file()
            assert list(t.values) == [t.user_attrs["metrics"][k] for k in cfg.objectives]
        else:
            assert t.state in (TrialState.PRUNED, TrialState.FAIL) and t.user_attrs.get("fail_reason")
    points = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(points)) == n, [(t.number, t.state.name, t.params, dict(t.user_attrs)) for t in trials]
    children = _children(cfg.tracking_uri, cfg.experiment_name)
    assert sorted(int(r.data.tags["metacompress.trial_number"]) for r in children) == list(range(n))
    return trials


@pytest.fixture
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def two_nodes() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_cli_search_on_a_local_ray(search_yaml, tmp_path: Path) -> None:
    """``metacompress search --backend ray`` end to end: study, summary, MLflow; ASHA may prune (with a reason)."""
    from typer.testing import CliRunner

    from metacompress.search.cli import app

    path = search_yaml(n_trials=4, ray=_ray_section(tmp_path),
                       space={"bits": [2, 4, 8], "epochs": {"low": 1, "high": 2}})
    result = CliRunner().invoke(app, ["search", str(path), "--backend", "ray"])
    assert result.exit_code == 0, result.output
    assert not ray.is_initialized()  # the Ray it started is shut down
    cfg = load_config(path, {"backend": "ray"})
    trials = _check_study(cfg, 4)
    summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["n_complete"] + summary["n_failed"] + summary["n_pruned"] == 4
    assert summary["n_complete"] == sum(t.state == TrialState.COMPLETE for t in trials) >= 1
    assert summary["pareto"] and all(e["model_uri"] for e in summary["pareto"])


def test_ray_then_local_continue_one_study(search_yaml, tmp_path: Path, local_ray: None) -> None:
    """A warm-start point runs first on Ray; the local backend then continues the same study to its budget."""
    path = search_yaml(n_trials=2, backend="ray", ray=_ray_section(tmp_path, asha=False))
    cfg = load_config(path)
    p = prepare(cfg)
    warm = {name: (d.choices[-1] if hasattr(d, "choices") else d.low) for name, d in p.distributions.items()}
    ended: list[int] = []
    run_search(cfg, prepared=p, warm_points=[warm], warm_info={"mode": "file", "n_points": 1},
               on_trial_end=lambda t, _p: ended.append(t.number))
    assert sorted(ended) == [0, 1]  # the progress hook saw each Ray trial
    first = _check_study(cfg, 2)
    assert first[0].params == warm and first[0].user_attrs.get("metacompress.warm_start") == "file"
    again = load_config(path, {"backend": "optuna", "n_trials": 4})
    summary = run_search(again)
    assert summary["n_complete"] + summary["n_failed"] + summary["n_pruned"] == 4
    trials = _check_study(again, 4)
    assert [t.params for t in trials[:2]] == [t.params for t in first]


def test_a_ray_search_chooses_its_warm_points_one_at_a_time(search_yaml, tmp_path: Path, local_ray: None) -> None:
    """The driver's searcher enqueues each sequential warm point before its ask, as a local search does."""
    from metacompress.search.warmstart import ATTR_INDEX, ATTR_PREDICTED, SequentialWarmStart, resolve_warm_start

    path = search_yaml(n_trials=3, backend="ray", tracking_uri="none",
                       ray=_ray_section(tmp_path, asha=False, max_concurrent=1))
    cfg = load_config(path)
    p = prepare(cfg)
    plan, info = resolve_warm_start("auto", p.space, p.task, n_points=2, seed=0, objectives=cfg.objectives,
                                    sequential=True, reference=p.reference)
    assert isinstance(plan, SequentialWarmStart)
    summary = run_search(cfg, prepared=p, warm_points=plan, warm_info=info)
    trials = counted_trials(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage))
    warm = [t for t in trials if ATTR_INDEX in t.user_attrs]
    assert [t.number for t in warm] == [0, 1] and len({t.user_attrs[ATTR_INDEX] for t in warm}) == 2
    assert all(0.0 <= t.user_attrs[ATTR_PREDICTED] <= 1.5 for t in warm)
    assert [w["number"] for w in summary["warm_start"]["points"]] == [0, 1] and summary["n_complete"] == 3


def test_the_searchers_checkpoint_leaves_the_warm_start_hook_out(tmp_path: Path) -> None:
    """Tune pickles its searcher at each experiment checkpoint; the hook (the task, the predictor) stays out."""
    from metacompress.search.ray_backend import StudySearch

    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path}/s.db")
    asked: list[str] = []
    searcher = StudySearch(study, {"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                           {"accuracy": "maximize", "size_bytes": "minimize"},
                           before_ask=lambda s: asked.append(s.study_name))  # a lambda does not pickle
    searcher.save(str(tmp_path / "searcher.pkl"))
    assert searcher._before_ask is not None and (tmp_path / "searcher.pkl").stat().st_size > 0
    assert searcher.suggest("t1") is not None and asked == [study.study_name]


def test_two_node_cluster_runs_trials_on_both_nodes(search_yaml, tmp_path: Path, two_nodes: Any) -> None:
    """Connect to an existing cluster by address: one trial per one-CPU node at a time, both nodes used."""
    path = search_yaml(n_trials=2, backend="ray", tracking_uri="none",
                       ray=_ray_section(tmp_path, address=two_nodes.address, asha=False))
    cfg = load_config(path)
    summary = run_search(cfg)
    trials = counted_trials(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage))
    assert summary["n_complete"] == len(trials) == 2
    assert len({t.user_attrs["ray"]["node_id"] for t in trials}) == 2


def test_fractional_gpus_are_reserved_per_trial_and_the_device_follows_the_worker(search_yaml, tmp_path: Path) -> None:
    """``ray.gpus_per_trial: 0.5`` on a node that declares one GPU: two trials share it, each is handed GPU 0 by
    Ray, and ``device: auto`` resolves in the worker (the CPU here, where torch has no CUDA; the GPU on a GPU node)."""
    import torch

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        path = search_yaml(n_trials=2, backend="ray", tracking_uri="none",
                           ray=_ray_section(tmp_path, gpus_per_trial=0.5, asha=False))
        summary = run_search(load_config(path))
    finally:
        ray.shutdown()
    cfg = load_config(path)
    trials = counted_trials(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage))
    assert summary["n_complete"] == len(trials) == 2
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for t in trials:
        assert [int(g) for g in t.user_attrs["ray"]["gpu_ids"]] == [0]
        assert t.user_attrs["ray"]["device"] == expected


@pytest.mark.parametrize(("flags", "ray_section", "field"), [
    (["--address", "127.0.0.1:9"], {}, "'ray.address'"),  # nothing listens: ray.init would retry for minutes
    (["--address", "ray://127.0.0.1:9"], {}, "'ray.address'"),
    (["--address", "not a host"], {}, "'ray.address'"),
    ([], {"cpus_per_trial": 1000}, "'ray.cpus_per_trial'"),  # Tune would wait for them forever
    ([], {"gpus_per_trial": 99}, "'ray.gpus_per_trial'"),
    ([], {"storage_path": "/proc/results"}, "'ray.storage_path'"),  # Tune failed there after Ray had started
])
def test_a_ray_search_that_could_never_run_is_refused_before_any_work(search_yaml, tmp_path, flags, ray_section,
                                                                       field) -> None:
    from typer.testing import CliRunner

    from metacompress.search.cli import app

    path = search_yaml(n_trials=2, tracking_uri="none", ray=_ray_section(tmp_path, **ray_section))
    result = CliRunner().invoke(app, ["search", str(path), "--backend", "ray", *flags])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0], result.output
    assert not (tmp_path / "study.db").exists() and not ray.is_initialized()  # no study, no Ray


def test_sigterm_is_ours_from_ray_init_to_shutdown_and_the_handler_before_it_is_back_after(search_yaml, tmp_path,
                                                                                         monkeypatch) -> None:
    """``ray.init`` installs a SIGTERM handler of its own (exit 15, no word); and ``ray.wait`` turns the interrupt
    our handler raises into a plain KeyboardInterrupt. A SIGTERM during a Ray search still exits 143, and one after
    it (the end-of-search logging) meets the CLI's handler again."""
    import signal

    from typer.testing import CliRunner

    from metacompress.search import ray_backend
    from metacompress.search.cli import app
    from metacompress.spaces import Terminated

    def before(signum, frame):
        raise AssertionError("the handler from before")

    signal.signal(signal.SIGTERM, before)
    try:
        with ray_backend._sigterm_interrupts() as ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init leaves it
            ours()
            assert signal.getsignal(signal.SIGTERM) == Terminated.raise_for
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def run_ray(p, on_trial_end=None):  # a SIGTERM while Tune waits in ray.wait, which re-raises it plain
        try:
            Terminated.raise_for(signal.SIGTERM, None)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(ray_backend, "run_ray", run_ray)
    monkeypatch.setattr(ray_backend, "check_ray", lambda cfg: None)
    path = search_yaml(n_trials=1, tracking_uri="none", ray=_ray_section(tmp_path))
    result = CliRunner().invoke(app, ["search", str(path), "--backend", "ray"])
    assert result.exit_code == 143 and "interrupted: finished trials are saved" in result.output, result.output
    plain = CliRunner().invoke(app, ["search", str(path), "--backend", "ray"])  # the next command starts afresh
    assert plain.exit_code == 143  # (the same SIGTERM again); a Ctrl-C alone is 130:
    monkeypatch.setattr(ray_backend, "run_ray", lambda p, on_trial_end=None: (_ for _ in ()).throw(KeyboardInterrupt))
    assert CliRunner().invoke(app, ["search", str(path), "--backend", "ray"]).exit_code == 130


@pytest.mark.slow(reason="two console-script Ray searches interrupted mid-run and one resumed (~70 s)")
def test_ctrl_c_and_sigterm_end_a_ray_search_like_a_local_one(search_yaml, tmp_path: Path) -> None:
    """Ctrl-C (Tune's own handler would end the run as if it had finished: exit 0, and `retrain` would promote from
    a partial search) exits 130, SIGTERM 143; the rerun finishes the budget with no trial lost or repeated."""
    import os
    import signal
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).with_name("metacompress")
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        path = search_yaml(n_trials=30, tracking_uri="none", storage=f"sqlite:///{tmp_path}/{sig.name}.db",
                           ray=_ray_section(tmp_path, asha=False))
        cfg = load_config(path, {"backend": "ray"})
        proc = subprocess.Popen([str(exe), "search", str(path), "--backend", "ray"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            try:
                if len(counted_trials(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage))) >= 2:
                    break
            except KeyError:  # not created yet
                continue
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == code, output
        assert "rerun the same command to resume" in output and "Wrote" not in output
        done = len(counted_trials(optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)))
        assert 2 <= done < 30
    rerun = subprocess.run([str(exe), "search", str(path), "--backend", "ray"], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming with {done} of 30 trials finished" in rerun.stdout
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
    trials = counted_trials(study)  # the interrupted trials are not counted: their re-queued copies ran instead
    assert len(trials) == 30 and len({json.dumps(t.params, sort_keys=True) for t in trials}) == 30
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_a_storage_uri_reaches_tune_as_it_is_and_a_folder_absolute(tmp_path, monkeypatch) -> None:
    from metacompress.search.ray_backend import _storage_path

    monkeypatch.chdir(tmp_path)
    assert _storage_path("s3://bucket/runs") == "s3://bucket/runs"  # Path() would make it s3:/bucket/runs
    assert _storage_path("ray_results") == str(tmp_path / "ray_results")

