"""The README's benchmark numbers are the committed results' (``experiments/results/*.json``), not typed by hand.

A benchmark re-run that moves a number fails here until the README says the new one. Only the headline numbers
are checked (the warm-start table, the predictor's targets, the pool and the flywheel's costs, latency under
load); the prose around them is the authors'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"

#: The README's warm-start table rows (by how they start) and their methods in ``warmstart.json``.
WARM_ROWS = {
    "warm-started TPE (ours": "warm",
    "the same predictor's k points as a batch": "warm_batch",
    "an earlier default, before the synthetic tasks": "warm_zoo",
    "sequential with the Reptile predictor": "warm_rep",
    "TPE in Syne Tune's BoundingBox": "bbox",
    "cold TPE": "cold_tpe",
    "NSGA-II": "nsga2",
    "random": "random",
}


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _results(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _row(readme: str, start: str) -> list[str]:
    rows = [line for line in readme.splitlines() if line.startswith(f"| {start}")]
    assert len(rows) == 1, f"the README has {len(rows)} table rows starting with {start!r}"
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


@pytest.mark.parametrize(("start", "method"), WARM_ROWS.items())
def test_warm_start_table_is_the_benchmarks(readme: str, start: str, method: str) -> None:
    w = _results("warmstart.json")
    cells = _row(readme, start)
    assert cells[1:4] == [f"{w[key][method]:.3f}" for key in ("hv_at_5", "hv_at_10", "hv_at_budget")]
    trials = w["trials_to_cold_hv_by_method"][method]
    reached = round(100 * trials["frac_reached"])
    if reached >= 50:  # a median that is not the censored value
        assert cells[4].replace("*", "").split(" (")[0] == f"{trials['median']:g}"
        if "reached in" in cells[4]:
            assert f"reached in {reached} %" in cells[4]
    else:
        assert cells[4] == f"not reached in {100 - reached} %"


def _prose(readme: str) -> str:
    """The README with every run of whitespace one space (its paragraphs wrap anywhere)."""
    return " ".join(readme.split())


def test_predictor_targets_are_the_benchmarks(readme: str) -> None:
    readme = _prose(readme)
    w = _results("warmstart.json")
    assert f"**{w['spearman_zero_shot']:.3f}** zero-shot" in readme
    assert f"**{w['spearman_after_5']:.3f}** after 5 trials" in readme
    assert f"median of **{w['trials_to_cold_hv']['median']:g} trials**" in readme


def test_pool_and_flywheel_costs_are_the_benchmarks(readme: str) -> None:
    readme = _prose(readme)
    pool = _results("pool.json")
    assert f"takes at most {pool['worst_total_s']:.2f} s on any task" in readme
    assert f"loaded in {pool['load_s']:.2f} s instead of a {pool['refit_s']:.1f} s refit" in readme
    gbm = _results("flywheel.json")["gbm"]["mean"]
    assert f"({gbm['continue_s']:.2f} s against a {gbm['refit_s']:.1f} s refit" in readme
    assert f"reads them in {gbm['cached_s']:.2f} s" in readme
    assert f"{gbm['continued']['measured']:.3f} and {gbm['refit']['measured']:.3f} with both proxies measured" \
        in readme
    reptile = _results("flywheel.json")["mean"]
    assert f"({reptile['continued']:.3f} against a refit's {reptile['refit']:.3f}" in readme
    assert f"{reptile['continue_s']:.1f} s against {reptile['refit_s']:.1f} s)" in readme


def test_the_tuned_proxys_other_signals_are_the_benchmarks(readme: str) -> None:
    readme = _prose(readme)
    result = _results("tuned_signals.json")
    for scores, where in ((result["mean_spearman"], "the zoo's trials"),
                          (result["synthetic"]["mean_spearman"], "the synthetic tasks")):
        others = [v for k, v in scores.items() if k != "accuracy (the tuned proxy)"]
        default = scores["accuracy (the tuned proxy)"]
        assert max(others) < default  # what the README concludes from them
        assert f"{min(others):.2f}–{max(others):.2f} against {default:.3f} on {where}" in readme


def test_latency_under_load_is_the_benchmarks(readme: str) -> None:
    readme = _prose(readme)
    tasks = _results("latency.json")["tasks"]

    def cell(task: str, method: str) -> str:
        c = tasks[task]["unstructured 50 %"]["loaded"][method]
        return f"{c['median']:.2f}× [{c['min']:.2f}–{c['max']:.2f}]"

    assert (f"reads {cell('digits-cnn', 'paired')} on digits-cnn and {cell('digits-mlp', 'paired')} on digits-mlp "
            f"under load; timed apart, as before, {cell('digits-cnn', 'apart')} and "
            f"{cell('digits-mlp', 'apart')}") in readme
    assert f"reads {cell('digits-cnn', 'paired')} over 10 measurements under load, against " \
           f"{cell('digits-cnn', 'apart')} timed apart" in readme
