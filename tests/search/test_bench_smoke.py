"""Smoke test of the warm-start benchmark's jobs: one tiny run of each kind, so a change that breaks the
benchmark (``experiments/bench_warmstart.py``) fails here rather than in a 2-hour rerun. The numbers it reports
are measured by the script itself, not here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture()
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.setenv("METACOMPRESS_CACHE", str(tmp_path / "cache"))
    import bench_warmstart

    threads = torch.get_num_threads()  # a benchmark job runs on one thread, as the benchmark's workers do
    bench_warmstart._CACHE.clear()
    yield bench_warmstart
    bench_warmstart._CACHE.clear()
    sys.modules.pop("bench_warmstart", None)
    torch.set_num_threads(threads)


def test_each_kind_of_benchmark_job_runs_and_is_labeled(bench):
    budget = 10  # the tables report HV after 5 and 10 trials
    runs = [bench.run_one(("wine-mlp", 0, method, budget, 3)) for method in ("random", "warm", "warm_zoo")]
    params = [t["params"] for t in runs[0]["trials"]]
    runs.append(bench.replicate(("wine-mlp", 0, "replicate1", budget, 0, params)))
    assert [r["method"] for r in runs] == ["random", "warm", "warm_zoo", "replicate1"]
    for r in runs[:3]:
        assert len(r["trials"]) == budget and len(r["hv"]) == budget and r["kind"] == "real"
    warm = runs[1]
    assert sum(t.get("warm", False) for t in warm["trials"]) == 3 and len(warm["predicted"]) == 3
    assert "GBMRetentionPredictor" in warm["reason"]  # the shipped default
    assert [t["params"] for t in runs[3]["trials"]] == params and runs[3]["kind"] == "replicate"
    summary = bench.summarize([r | {"method": "cold_tpe"} if r["method"] == "random" else r for r in runs[:3]],
                              budget, core=("warm", "cold_tpe"))
    assert summary["tasks"] == ["wine-mlp"] and 1 <= summary["trials_to_cold_hv"]["median"] <= budget + 1
    assert {"warm", "warm_zoo", "cold_tpe"} <= set(summary["methods"]) <= set(bench.LABELS)


def test_in_task_references_leave_out_the_shipped_rows_that_repeat_a_query_trial(bench):
    import bench_predictors

    from metacompress.learners.meta import History

    sets = bench.real_trial_sets("wine-mlp", bench.load_runs(bench.RUNS))
    assert len(sets) >= 2 and all(len(y) == len(X) for X, y in sets)
    ref = bench_predictors.in_task_references("wine-mlp", sets)
    # the shipped rows of wine hold the cold runs' trials; those that repeat a random run's policy are dropped
    assert ref["own_rows_dropped"] > 0 and ref["own_rows_n"] + ref["own_rows_dropped"] == len(
        History.shipped().subset(["wine-mlp"]))
    assert ref["runs"] == len(sets) and -1.0 <= ref["own_rows"] <= 1.0 and -1.0 <= ref["own_runs"] <= 1.0
    sys.modules.pop("bench_predictors", None)
