"""Fault tolerance, measured: kill -9, Ray node loss, Tune restore, failing trials, tracking outage, bad input.

Scenarios (each on digits-mlp, real sqlite Optuna storage, real MLflow store; seeds fixed, kill moments drawn by
``random.Random(--seed)``):

* ``kill9`` — ``metacompress retrain`` (local backend, 40 trials) killed with SIGKILL at ``--kills`` random moments
  (2-12 s after each start; ``killed`` counts the runs still alive at their moment), rerun
  each time, then run to the end. Counted: trials missing from the budget or without an MLflow child run
  (``lost``); repeated trial points, second child runs of a trial, second promotions (``duplicated``).
* ``ray_node_loss`` — ``metacompress search --backend ray`` on a two-node ``ray.cluster_utils.Cluster``; the worker
  node is removed while trials run on both. Every trial must complete (Tune retries it, ``ray.max_failures``).
* ``tune_restore`` — a plain Tune experiment of the metacompress trainable over fixed policies, its driver killed
  with SIGKILL after the first trial, restored with ``Tuner.restore(resume_errored=True)`` and finished.
* ``trial_faults`` — a task plugin (``tests/search/faulty_task.py``) whose trials raise, give NaN, or pass
  ``train.trial_timeout_s``: each must be a failed trial with its reason in MLflow, the budget still done.
* ``tracking_outage`` — a real ``mlflow server`` stopped mid-search and restarted on the same port and store (the
  search flushes at its end), then stopped until after the search ends (one warning line; a rerun flushes).
* ``fuzz`` — 500 generated bad inputs (``tests/search/test_fuzz.py``) through the CLI, in-process.

Run ``python experiments/bench_faults.py`` (about 15 minutes on 2 busy cores); writes ``results/faults.json`` and
``results/faults.md``. ``--only kill9,fuzz`` runs a subset (the other keys keep their last values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "search"
sys.path.insert(0, str(HELPERS))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
EXE = Path(sys.executable).with_name("metacompress")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
       "PYTHONUNBUFFERED": "1"}


def job_yaml(tmp: Path, name: str = "job", **over: Any) -> Path:
    """A small digits-mlp job config in ``tmp`` (keys in ``over`` replace the defaults)."""
    cfg = {"task": "digits-mlp", "n_trials": 6, "seed": 0, "storage": f"sqlite:///{tmp}/study.db",
           "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "out": str(tmp / "out"), "warm_start": {"mode": "off"},
           "space": {"bits": [2, 4, 8], "epochs": {"low": 2, "high": 3}, "prune_method": ["unstructured"]},
           "train": {"latency_repeats": 2, "batch_size": 128}, **over}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def audit(cfg_path: Path, study_name: str, tracking_uri: str | None = None, out: Path | None = None
          ) -> dict[str, Any]:
    """Counts of one finished study against its budget, its MLflow children and its Pareto models."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from metacompress.search.config import load_config
    from metacompress.search.study import counted_trials

    cfg = load_config(cfg_path, {"study_name": study_name, "tracking_uri": tracking_uri})
    study = optuna.load_study(study_name=study_name, storage=cfg.storage)
    counted = counted_trials(study)
    points = Counter(json.dumps(t.params, sort_keys=True) for t in counted)
    client = mlflow.MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`metacompress.study_name` = '{study_name}'")
    parent = runs[0].info.run_id if runs else None
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                                  max_results=5000) if parent else []
    per_trial = Counter(int(r.data.tags["metacompress.trial_number"]) for r in children)
    numbers = {t.number for t in counted}
    summary = json.loads((Path(out or cfg.out) / "summary.json").read_text())
    pareto_ok = bool(summary["pareto"]) and all(e.get("model_uri") for e in summary["pareto"])
    return {"budget": cfg.n_trials, "counted": len(counted),
            "complete": sum(t.state == TrialState.COMPLETE for t in counted),
            "lost": max(0, cfg.n_trials - len(counted)) + len(numbers - set(per_trial)),
            "duplicated": sum(n - 1 for n in points.values()) + sum(n - 1 for n in per_trial.values()),
            "children": len(children), "pareto_models": pareto_ok,
            "failed_reasons": [r.data.tags.get("metacompress.fail_reason", "") for r in children
                               if r.data.tags.get("metacompress.state") == "FAIL"]}


def kill9(runs: int, seed: int, n_trials: int = 40) -> dict[str, Any]:
    """Kill ``metacompress retrain`` ``runs`` times at random moments, rerun each time, then audit."""
    import mlflow

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = job_yaml(tmp, n_trials=n_trials, space={"bits": [2, 4, 8], "epochs": {"low": 8, "high": 12},
                                                "prune_method": ["unstructured"]})
        cmd = [str(EXE), "retrain", str(cfg), "--registered-model", "digits", "--run-key", "k9"]
        moments, codes = [], []
        for _ in range(runs):
            proc = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            moment = rng.uniform(2.0, 12.0)
            time.sleep(moment)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            moments.append(round(moment, 2))
            codes.append(proc.wait())
        final = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True, timeout=1800)
        result = audit(cfg, "job-k9", out=tmp / "out" / "k9")
        uri = f"sqlite:///{tmp}/mlflow.db"
        versions = mlflow.MlflowClient(uri, registry_uri=uri).search_model_versions(
            "name = 'digits' and tags.`metacompress.run_key` = 'job-k9'")
        result["duplicated"] += max(0, len(versions) - 1)
        return {"runs": runs, "killed": sum(c == -signal.SIGKILL for c in codes), "kill_moments_s": moments,
                "exit_codes": codes,
                "final_exit": final.returncode, "final_line": (final.stdout.strip().splitlines() or [""])[-1],
                "promotions": len(versions), **result}


def trial_faults() -> dict[str, Any]:
    """Failing trials (raise, NaN, timeout) are recorded failed with their reason; the budget is still done."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        task = {"factory": "faulty_task:make_task", "kwargs": {"counter": str(tmp / "counter"), "sleep_s": 6.0,
                                                                "schedule": ["ok", "raise", "nan", "sleep", "ok"]}}
        cfg = job_yaml(tmp, task=task, n_trials=6, train={"latency_repeats": 2, "batch_size": 128,
                                                          "trial_timeout_s": 5.0})
        run = subprocess.run([str(EXE), "search", str(cfg)], cwd=tmp, env=ENV, capture_output=True, text=True,
                             timeout=1800)
        result = audit(cfg, "job")
        reasons = result.pop("failed_reasons")
        kinds = {k: any(k in r for r in reasons) for k in ("injected failure", "non-finite", "time limit")}
        return {"exit": run.returncode, "failed_with_reason": len(reasons), "reasons_found": kinds, **result}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(tmp: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
                             "--artifacts-destination", str(tmp / "art")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def _n_complete(cfg: Path, study: str) -> int:
    import optuna
    from optuna.trial import TrialState

    try:
        s = optuna.load_study(study_name=study, storage=f"sqlite:///{cfg.parent}/study.db")
    except KeyError:
        return 0
    return sum(t.state == TrialState.COMPLETE for t in s.get_trials(deepcopy=False))


def _wait(pred: Any, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.5)
    return False


def tracking_outage() -> dict[str, Any]:
    """Server stopped mid-search and back before the end; then down past the end and flushed by a rerun."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = _free_port()
        uri = f"http://127.0.0.1:{port}"
        server = _server(tmp, port)
        cfg = job_yaml(tmp, tracking_uri=uri, n_trials=6)
        env = {**ENV, "METACOMPRESS_TRACKING_FLUSH_S": "300"}
        proc = subprocess.Popen([str(EXE), "search", str(cfg), "--study-name", "back"], cwd=tmp, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait(lambda: _n_complete(cfg, "back") >= 1, 600)
        _stop(server)
        _wait(lambda: _n_complete(cfg, "back") >= 3, 600)
        server = _server(tmp, port)
        first_exit = proc.wait(timeout=1800)
        first = audit(cfg, "back", uri)
        # Phase 2: down until after the end (short flush window), then a rerun flushes.
        env["METACOMPRESS_TRACKING_FLUSH_S"] = "5"
        cmd = [str(EXE), "search", str(cfg), "--study-name", "down"]
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait(lambda: _n_complete(cfg, "down") >= 1, 600)
        _stop(server)
        second_exit = proc.wait(timeout=1800)
        warning = [ln for ln in proc.stderr.read().splitlines() if "rerun the same command" in ln]
        server = _server(tmp, port)
        rerun = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
        second = audit(cfg, "down", uri)
        _stop(server)
        return {"lost": first["lost"] + second["lost"], "duplicated": first["duplicated"] + second["duplicated"],
                "back_before_end": {"exit": first_exit, **{k: first[k] for k in ("counted", "children", "lost",
                                                                                  "pareto_models")}},
                "down_past_end": {"exit": second_exit, "warning_line": warning[:1], "rerun_exit": rerun.returncode,
                                  **{k: second[k] for k in ("counted", "children", "lost", "pareto_models")}},
                "behaviour": "buffer in the Optuna study, flush with backoff at the end; else one line: rerun"}


def ray_node_loss() -> dict[str, Any]:
    """Remove the worker node of a two-node cluster while trials run on it."""
    import optuna
    import ray
    from optuna.trial import TrialState
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            cfg = job_yaml(tmp, backend="ray", n_trials=4, space={"bits": [2, 4, 8], "epochs": {"low": 12, "high": 12}},
                           ray={"address": cluster.address, "storage_path": str(tmp / "ray"), "max_concurrent": 2,
                                "asha": False, "max_failures": 3})
            proc = subprocess.Popen([str(EXE), "search", str(cfg)], cwd=tmp, env=ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)

            def two_running() -> bool:
                try:
                    s = optuna.load_study(study_name="job", storage=f"sqlite:///{tmp}/study.db")
                except KeyError:
                    return False
                return len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) >= 2

            removed = _wait(two_running, 600)
            time.sleep(3.0)
            cluster.remove_node(worker)
            code = proc.wait(timeout=1800)
            result = audit(cfg, "job")
            missing_children = result["lost"] - max(0, result["budget"] - result["counted"])
            errors = len(list((tmp / "ray").rglob("error*.txt")))  # a trial that failed on the lost node, retried
            return {"exit": code, "worker_removed_mid_sweep": removed, "trial_errors_retried": errors,
                    **{k: result[k] for k in (
                "budget", "counted", "complete", "duplicated", "children", "pareto_models")},
                "lost": result["budget"] - result["complete"] + missing_children}
        finally:
            ray.shutdown()
            cluster.shutdown()


TUNE_SCRIPT = """
import json, sys
import optuna, ray
from ray import tune
from metacompress.search.config import load_config
from metacompress.search.runner import prepare
from metacompress.search.ray_backend import NUMBER_KEY, PAYLOAD_KEY, TRIAL_ID_KEY, _make_trainable
mode, cfg_path, storage = sys.argv[1:4]
p = prepare(load_config(cfg_path))
sampler = optuna.samplers.RandomSampler(seed=0)
study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
points = [study.ask(p.distributions).params for _ in range(int(sys.argv[4]))]
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
trainable = tune.with_resources(_make_trainable([ray.put(p.objective)], storage + "/art", "cpu", 1), {"cpu": 1})
space = {TRIAL_ID_KEY: 0, NUMBER_KEY: tune.grid_search(list(range(len(points))))}
space.update({k: tune.sample_from(lambda spec, k=k: points[spec.config[NUMBER_KEY]][k]) for k in points[0]})
if mode == "start":
    tuner = tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(name="exp", storage_path=storage,
                       verbose=0))
else:
    tuner = tune.Tuner.restore(storage + "/exp", trainable=trainable, resume_errored=True)
grid = tuner.fit()
done = [r.config[NUMBER_KEY] for r in grid if r.metrics and r.metrics.get(PAYLOAD_KEY)]
print(json.dumps({"n": len(grid), "done": sorted(done)}))
"""


def tune_restore(n: int = 4) -> dict[str, Any]:
    """A Tune experiment of the metacompress trainable over ``n`` policies, its driver killed with SIGKILL after
    the first trial, then ``Tuner.restore(..., resume_errored=True).fit()``: every trial must finish once."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = job_yaml(tmp, space={"bits": [2, 4, 8], "epochs": {"low": 6, "high": 6}}, tracking_uri="none")
        script = tmp / "tune_exp.py"
        script.write_text(TUNE_SCRIPT)
        args = [sys.executable, str(script), "start", str(cfg), str(tmp / "ray"), str(n)]
        proc = subprocess.Popen(args, cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def finished_one() -> bool:  # a finished trial has written its packed export
            return any((tmp / "ray" / "art").glob("*.mcz"))

        killed = _wait(finished_one, 900) and proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        args[2] = "restore"
        run = subprocess.run(args, cwd=tmp, env=ENV, capture_output=True, text=True, timeout=1800)
        last = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {"n": 0, "done": []}
        done = last["done"]
        return {"killed_mid_experiment": killed, "restore_exit": run.returncode, "trials": n,
                "finished": len(set(done)),
                "lost": n - len(set(done)), "duplicated": len(done) - len(set(done)),
                "error": None if run.returncode == 0 else run.stderr[-500:]}


def fuzz(n: int) -> dict[str, Any]:
    """``n`` generated bad inputs through the CLI (in-process): exit codes and tracebacks."""
    from hypothesis import HealthCheck, given, settings
    from typer.testing import CliRunner

    import test_fuzz
    from metacompress.search.cli import app

    tally: Counter[str] = Counter()
    runner = CliRunner()

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=test_fuzz.bad_case())
    def one(case: Any) -> None:
        field, data, flags = case
        with tempfile.TemporaryDirectory() as d:
            result = runner.invoke(app, ["retrain", str(test_fuzz.write_case(Path(d), data)), *flags])
        problem = test_fuzz.check(result, field)
        tally["cases"] += 1
        tally["tracebacks"] += "Traceback" in result.output or (result.exception is not None and
                                                                not isinstance(result.exception, SystemExit))
        tally["exit_2_one_line_named"] += problem is None

    one()
    return {"cases": tally["cases"], "tracebacks": tally["tracebacks"], "ok": tally["exit_2_one_line_named"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--fuzz", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="kill9,trial_faults,tracking_outage,ray_node_loss,tune_restore,fuzz")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results", help="results folder")
    args = parser.parse_args()
    out = args.out / "faults.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    scenarios = {"kill9": lambda: kill9(args.kills, args.seed), "trial_faults": trial_faults,
                 "tracking_outage": tracking_outage, "ray_node_loss": ray_node_loss, "tune_restore": tune_restore,
                 "fuzz": lambda: fuzz(args.fuzz)}
    for name in args.only.split(","):
        t0 = time.time()
        try:
            results[name] = {**scenarios[name](), "wall_s": round(time.time() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - record the failure and go on with the other scenarios
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "wall_s": round(time.time() - t0, 1)}
        print(name, json.dumps(results[name]), flush=True)
        results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "seed": args.seed,
                              "platform": platform.platform()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(markdown(results))


def markdown(r: dict[str, Any]) -> str:
    """A short table of the headline counts."""
    rows = ["| scenario | lost | duplicated | notes |", "|---|---|---|---|"]
    for name in ("kill9", "ray_node_loss", "tune_restore", "tracking_outage", "trial_faults"):
        v = r.get(name, {})
        keys = ("runs", "killed", "counted", "children", "promotions", "failed_with_reason", "trial_errors_retried",
                "finished")
        note = v.get("error") or ", ".join(f"{k}={v[k]}" for k in keys if k in v)
        rows.append(f"| {name} | {v.get('lost', '-')} | {v.get('duplicated', '-')} | {note} |")
    f = r.get("fuzz", {})
    rows.append(f"| fuzz | - | - | cases={f.get('cases')}, tracebacks={f.get('tracebacks')} |")
    m = r.get("machine", {})
    head = (f"# Fault tolerance (`python experiments/bench_faults.py`)\n\n{m.get('cpus')} CPUs ({m.get('platform')}, "
            f"shared with other jobs), Python {m.get('python')}, seed {m.get('seed')}; counts, not timings.\n\n")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
