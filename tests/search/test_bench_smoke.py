"""Smoke test of the warm-start benchmark's jobs: one tiny run of each kind, so a change that breaks the
benchmark (``experiments/bench_warmstart.py``) fails here rather than in a 2-hour rerun. The numbers it reports
are measured by the script itself, not here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metacompress.learners.meta.proxy import PROXY_NAME, TUNED_PROXY_NAME

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
    batch = bench.run_one(("wine-mlp", 0, "warm_batch_tuned", budget, 3))  # suggest --tuned 3's batch
    assert any(TUNED_PROXY_NAME in p for p in batch["predicted"]) and "propose_s" not in batch
    assert (bench.PROXY, bench.TUNED) == (PROXY_NAME, TUNED_PROXY_NAME)  # its copies of the names (lazy imports)
    assert {PROXY_NAME, TUNED_PROXY_NAME} <= set(runs[1]["trials"][0]["metrics"])  # every trial records both
    assert "propose_s" in runs[1]  # the sequential proposer's time is recorded; the batch's is not separated
    assert runs[1]["setup_s"] > 0  # and its setup (the predictor's fit, the probes, the pool)
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
    # the shipped rows of wine hold the cold runs' trials; exactly those that repeat a random run's policy are
    # dropped (counted here on the policies themselves, not on the encoded inputs the function matches)
    space = bench._setup("wine-mlp")["space"]

    def policy_key(policy: dict) -> tuple:
        return tuple(sorted((k, round(v, 6) if isinstance(v, float) else v) for k, v in policy.items()))

    queried = {policy_key(space.decode(t["params"]).to_dict()) for r in bench.load_runs(bench.RUNS)
               if r["task"] == "wine-mlp" and r["method"] == "random" and r.get("kind") == "real"
               for t in r["trials"] if t["metrics"] is not None}
    shipped = History.shipped().subset(["wine-mlp"]).frame
    repeats = sum(policy_key(json.loads(p)) in queried for p in shipped["policy"])
    assert ref["own_rows_dropped"] == repeats > 0 and ref["own_rows_n"] + repeats == len(shipped)
    assert ref["runs"] == len(sets) and -1.0 <= ref["own_rows"] <= 1.0 and -1.0 <= ref["own_runs"] <= 1.0
    sys.modules.pop("bench_predictors", None)


def test_the_tie_limited_ceiling_is_one_without_ties_and_falls_with_them(bench):
    assert bench.tie_ceiling([np.linspace(0.5, 1.0, 30)]) == pytest.approx(1.0)
    # three in four share the best outcome (as on wine): a perfect but never-tying predictor scores far below 1
    y = np.r_[np.linspace(0.5, 0.9, 8), np.ones(24)]
    ceiling = bench.tie_ceiling([y])
    assert 0.5 < ceiling < 0.85
    # ... and exactly what Spearman gives the outcomes with one random tie-break, on average
    rng = np.random.default_rng(1)
    direct = np.mean([bench._rank_scores(y + 1e-9 * rng.standard_normal(len(y)), y)[0] for _ in range(400)])
    assert ceiling == pytest.approx(direct, abs=0.02)


def test_the_bounding_box_peer_ranks_fronts_and_restricts_every_layer_to_the_box(bench):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    retention, log_ratio = np.array([1.0, 0.9, 0.8, 0.85, 0.7]), np.array([1.0, 2.0, 3.0, 1.5, 2.5])
    # (1,1), (.9,2), (.8,3) trade off: the front; (.85,1.5) is dominated by (.9,2); (.7,2.5) by (.8,3)
    assert bench._nondominated_rank(retention, log_ratio).tolist() == [0, 0, 0, 1, 1]
    space = {"prune.a": FloatDistribution(0.0, 0.9), "prune.b": FloatDistribution(0.0, 0.9),
             "bits.a": CategoricalDistribution((2, 3, 4, 6, 8)), "prune_method": CategoricalDistribution(
                 ("unstructured", "structured")), "epochs": IntDistribution(2, 8),
             "lr": FloatDistribution(1e-3, 3e-2, log=True), "kd_lambda": FloatDistribution(0.0, 1.0),
             "temperature": FloatDistribution(1.0, 8.0)}
    box = {"prune": (0.2, 0.95), "bits": (2.2, 6.3), "structured": [0.0], "epochs": (1.0, 3.0),
           "lr": (1e-4, 5e-4), "kd_lambda": (0.1, 0.5), "temperature": (2.0, 3.0)}
    out = bench._restrict(space, box)
    assert (out["prune.a"].low, out["prune.a"].high) == (0.2, 0.9) == (out["prune.b"].low, out["prune.b"].high)
    assert out["bits.a"].choices == (2, 3, 4, 6) and out["prune_method"].choices == ("unstructured",)
    assert (out["epochs"].low, out["epochs"].high) == (2, 3)
    assert (out["lr"].low, out["lr"].high) == (1e-3, 1e-3) and out["lr"].log  # the box misses: nearest value
    assert (out["kd_lambda"].low, out["kd_lambda"].high) == (0.1, 0.5)


def test_re_timed_runs_are_paired_with_cold_tpe_re_timed(bench):
    """A method re-run on a later machine (``_retime``) is timed against cold TPE re-run there, never against the
    cold runs of another machine, with its recorded setup counted, and has a row label."""
    def run(method: str, trial_s: float, hv: list[float], propose_s: float | None = None) -> dict:
        r = {"task": "t", "seed": 0, "method": method, "hv": hv, "trials": [{"s": trial_s}] * len(hv)}
        return r | ({"propose_s": propose_s} if propose_s is not None else {})

    runs = [run("cold_tpe", 5.0, [0.5, 0.9]), run("cold_tpe_retime", 1.0, [0.5, 0.9]),
            run("warm", 1.0, [0.9, 0.9], 0.5), run("warm_retime", 1.0, [0.9, 0.9], 0.5) | {"setup_s": 3.0}]
    t = bench.time_to_cold_hv(runs, 2)
    assert t["warm"]["median_share"] == pytest.approx(1.5 / 10.0)  # one 1 s trial + 0.5 s against 2 × 5 s
    assert t["warm"]["setup_s_median"] is None  # not recorded: not counted
    assert t["warm_retime"]["median_share"] == pytest.approx(4.5 / 2.0)  # its setup counted, against 2 × 1 s
    assert t["warm_retime"]["setup_s_median"] == 3.0
    assert t["warm_retime"]["median_share_steps"] == pytest.approx(1.5 / 2.0)  # the same without its setup
    assert t["warm"]["median_share_steps"] == t["warm"]["median_share"]
    assert "warm" + bench.RETIME in bench.LABELS


def test_a_warm_run_loads_its_held_out_predictor_as_a_search_loads_the_shipped_one(bench):
    """The setup a re-timed run counts is loading the saved predictor (as the build ships it), not fitting it; a GBM
    that focuses per task keeps its rows, so it is used as fitted."""
    from metacompress.learners.meta import GBMRetentionPredictor, History

    shipped = History.shipped()
    rows = np.isin(shipped.groups(), shipped.tasks[:3])
    X, y, g = shipped.X()[rows], shipped.y()[rows], shipped.groups()[rows]
    s = {"predictors": {"warm": GBMRetentionPredictor(max_iter=10).fit(X, y, g),
                        "focus": GBMRetentionPredictor(max_iter=10, similarity=1.0).fit(X, y, g)}}
    loaded = bench.pretrained(s, "warm")
    assert loaded is not s["predictors"]["warm"] and not hasattr(loaded.models_[0], "_predictors")  # the arrays
    np.testing.assert_array_equal(loaded.predict(X), s["predictors"]["warm"].predict(X))
    saved = s["saved"]["warm"]
    assert bench.pretrained(s, "warm") is not loaded and s["saved"]["warm"] == saved  # saved once, loaded each run
    assert bench.pretrained(s, "focus") is s["predictors"]["focus"]
