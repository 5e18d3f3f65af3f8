"""Smoke runs of the benchmark scripts under ``experiments/``: each runs end to end at its smallest settings into a
temporary folder and writes its JSON and Markdown, so a change that breaks a script fails here rather than on the
next full run. What they measure is reported by the scripts themselves, not asserted here (a smoke run is too small
to say anything about a target); the committed results in ``experiments/results/`` are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

#: script -> (smallest arguments, keys its JSON must have)
SCRIPTS = {
    "bench_compression.py": (["--quick", "--tasks", "digits-cnn"], {"targets", "tasks", "machine"}),
    "bench_overhead.py": (["--quick", "--tasks", "digits-cnn"], {"overhead_ratio", "tasks", "machine"}),
    "bench_metakd.py": (["--train-seeds", "1", "--test-seeds", "0", "--episodes", "2", "--inner", "2",
                         "--steps", "2", "--repeats", "1", "--levels", "moderate"], {"levels", "verdict"}),
    "bench_faults.py": (["--only", "fuzz", "--fuzz", "6"], {"fuzz", "machine"}),
    "bench_backends.py": (["--trials", "2", "--repeats", "1", "--mlflow-trials", "2"],
                          {"ray_overhead_s", "mlflow_ms_per_trial", "local_overhead_s"}),
    "bench_predictors.py": (["--quick", "--tasks", "wine-mlp"],
                            {"mean", "per_task", "in_task_reference", "synthetic_validation"}),
    "bench_flywheel.py": (["--tasks", "wine-mlp", "--meta-epochs", "2"], {"per_task", "mean", "flywheel_epochs"}),
    "bench_tuned_steps.py": (["--tasks", "wine-mlp", "--runs-per-task", "1", "--synthetic", "1",
                              "--synthetic-rows", "8"],
                             {"mean_spearman", "per_task", "seconds_per_measurement", "machine", "synthetic"}),
    "bench_tuned_signals.py": (["--tasks", "wine-mlp", "--runs-per-task", "1", "--synthetic", "1",
                                "--synthetic-rows", "8"], {"mean_spearman", "per_task", "machine", "synthetic"}),
    "bench_rnn_finetune.py": (["--repeats", "1", "--epochs", "1"], {"policies", "task", "machine"}),
    "bench_latency.py": (["--tasks", "digits-mlp", "--repeats", "1", "--load", "1"], {"tasks", "blocks", "machine"}),
    "bench_pool.py": (["--tasks", "wine-mlp", "--repeats", "1", "--n", "500"],
                      {"per_task", "load_s", "refit_s", "met", "machine", "wine-mlp"}),
    "bench_gpu.py": (["--tasks", "digits-mlp", "--devices", "cpu", "--policies", "1", "--repeats", "1",
                      "--searches", "cpu:1", "--search-trials", "2"],
                     {"settings", "tasks", "machine", "digits-mlp"}),
}


#: The longest smoke runs (15-40 s each) go to ``make test-slow``, keeping the default run under ten minutes.
_SLOW_SMOKE = {"bench_backends.py", "bench_predictors.py", "bench_flywheel.py", "bench_gpu.py", "bench_overhead.py"}


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in _SLOW_SMOKE else s
                                    for s in SCRIPTS])
def test_benchmark_script_runs_at_its_smallest_settings(script, tmp_path):
    args, keys = SCRIPTS[script]
    committed = {p: p.stat().st_mtime_ns for p in (EXPERIMENTS / "results").iterdir()}
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), *args, "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    stem = script.removeprefix("bench_").removesuffix(".py")
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    flat = set(result) | {k for v in result.values() if isinstance(v, dict) for k in v}
    assert keys <= flat, sorted(keys - flat)
    assert (tmp_path / f"{stem}.md").read_text().startswith("#")
    assert {p: p.stat().st_mtime_ns for p in (EXPERIMENTS / "results").iterdir()} == committed
    if script == "bench_faults.py":  # the fuzz cases: bad input gives one named line and exit 2, never a traceback
        assert result["fuzz"]["cases"] == 6 and result["fuzz"]["tracebacks"] == 0 and result["fuzz"]["ok"] == 6
    if script == "bench_pool.py":  # the shipped arrays scored the pool exactly as scikit-learn's trees
        timing = result["per_task"]["wine-mlp"]
        assert timing["identical_predictions"] and timing["n_candidates"] == 500 and timing["total_s"] > 0
    if script == "bench_gpu.py":  # a real two-trial search ran and was timed
        search = result["tasks"]["digits-mlp"]["search"]["cpu:1"]
        assert search["trials"] == 2 and search["failed"] == 0 and search["trials_per_hour"] > 0


def test_task_normalized_targets_keep_each_tasks_order_and_drop_its_level(monkeypatch):
    """The per-task targets of bench_predictors' ablation: a task's level is gone, its order within kept."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    from bench_predictors import task_normalized

    y = np.array([0.9, 0.7, 0.8, 0.2, 0.4, 0.4])
    g = np.array(["a", "a", "a", "b", "b", "b"])
    centered = task_normalized(y, g, "center")
    np.testing.assert_allclose(centered, [0.1, -0.1, 0.0, -2 / 15, 1 / 15, 1 / 15], atol=1e-12)
    ranked = task_normalized(y, g, "rank")
    np.testing.assert_allclose(ranked, [2.5 / 3, 0.5 / 3, 1.5 / 3, 0.5 / 3, 2 / 3, 2 / 3])  # a tie shares its rank
    with pytest.raises(ValueError, match="how"):
        task_normalized(y, g, "zscore")
