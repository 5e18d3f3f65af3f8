"""What else the tuned proxy's student could say: a continuous score, or the slope of its first steps.

The tuned proxy (:meth:`metacompress.learners.meta.ProxyProbe.tuned`) is a candidate's accuracy on the validation
rows after the first :func:`~metacompress.learners.meta.proxy.tuned_steps` steps of its fine-tuning (at most 20 and
half of the run). Two ideas might rank the trials better for the same steps, as learning-curve extrapolation does
(Domhan et al. 2015): accuracy moves in steps of one validation row, so a *continuous* score of the same student
(the mean probability of the true class, or its negative cross-entropy) could separate candidates whose accuracy
ties; and the *slope* between a look at half those steps and the end (linear extrapolation to three quarters or to
the whole run) could tell which students are still climbing. Each signal is scored alone as a ranker of the
trials' fine-tuned accuracy, as ``bench_tuned_steps.py`` scores step counts: Spearman on the real trials of
``bench_warmstart.py``'s ``random`` runs (all but each run's first 5; every trial replayed with its run's seed and
the task's batch size), mean over runs, then over tasks; and, where choosing does not peek at the zoo, on the
shipped rows of the 24 held-out synthetic tasks (``bench_predictors.held_out_synthetic_tasks``; the build's seed 0,
batch size 64). CPU, one torch thread. Writes ``results/tuned_signals.json`` and ``.md`` (about 4 minutes on this
2-core machine).

Usage::

    python experiments/bench_tuned_signals.py
    python experiments/bench_tuned_signals.py --tasks wine-mlp --runs-per-task 1 --synthetic 1 --synthetic-rows 8 \\
        --out /tmp/s   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from bench_tuned_steps import SHOTS, add_query_arguments, synthetic_sets
from bench_warmstart import RUNS, _rank_scores, _setup, load_runs
from benchinfo import machine

DEFAULT = "accuracy (the tuned proxy)"
#: Signal label -> its value from the looks at half the steps (``q``) and at all of them (``h``).
SIGNALS: dict[str, Callable[[dict[str, float]], float]] = {
    DEFAULT: lambda v: v["h_acc"],
    "accuracy after half the steps": lambda v: v["q_acc"],
    "mean probability of the true class": lambda v: v["h_prob"],
    "negative cross-entropy": lambda v: -v["h_nll"],
    "accuracy, ties broken by the true class's probability": lambda v: v["h_acc"] + 1e-3 * v["h_prob"],
    "accuracy extrapolated to ¾ of the run (+ ½ slope)": lambda v: v["h_acc"] + 0.5 * (v["h_acc"] - v["q_acc"]),
    "accuracy extrapolated to the whole run (+ 1 slope)": lambda v: 2 * v["h_acc"] - v["q_acc"],
}


def looks(probe: Any, policy: Any, seed: int, batch_size: int) -> dict[str, float]:
    """The student's accuracy, mean true-class probability and cross-entropy on the probe rows after half of the
    tuned proxy's steps (``q_``) and after all of them (``h_``)."""
    steps = probe.steps(policy, batch_size)
    out: dict[str, float] = {}
    for tag, k in (("q", max(1, steps // 2)), ("h", steps)):
        student = probe.tuned_student(policy, seed=seed, batch_size=batch_size, steps=k).eval()
        with torch.no_grad():
            logits = student(probe.x)
        out[f"{tag}_acc"] = float((logits.argmax(1) == probe.y).float().mean())
        out[f"{tag}_prob"] = float(torch.softmax(logits, 1).gather(1, probe.y[:, None]).mean())
        out[f"{tag}_nll"] = float(torch.nn.functional.cross_entropy(logits, probe.y))
    return out


def _score(values: list[dict[str, float]], y: np.ndarray) -> dict[str, float]:
    return {label: _rank_scores(np.array([f(v) for v in values]), y)[0] for label, f in SIGNALS.items()}


def measure_task(name: str, runs: list[dict[str, Any]], max_runs: int | None) -> dict[str, Any]:
    """Every signal's Spearman on ``name``'s random runs (mean over runs) and seconds per trial of both looks."""
    from metacompress.learners.meta import ProxyProbe

    s = _setup(name)
    probe, batch_size = ProxyProbe(s["task"]), s["cfg"].train.batch_size
    chosen = [r for r in runs if r["task"] == name and r["method"] == "random" and r.get("kind") == "real"]
    rho: dict[str, list[float]] = {label: [] for label in SIGNALS}
    t0, count = time.perf_counter(), 0
    for r in chosen[:max_runs]:
        trials = [t for t in r["trials"] if t["metrics"] is not None][SHOTS:]
        y = np.array([t["metrics"]["accuracy"] / r["teacher"]["accuracy"] for t in trials])
        values = [looks(probe, s["space"].decode(t["params"]), r["seed"], batch_size) for t in trials]
        for label, v in _score(values, y).items():
            rho[label].append(v)
        count += len(trials)
        print(f"{name} seed {r['seed']}: " + ", ".join(f"{v[-1]:.3f}" for v in rho.values()), flush=True)
    return {"spearman": {k: float(np.mean(v)) for k, v in rho.items()}, "runs": len(chosen[:max_runs]),
            "trials": count, "seconds_per_trial": (time.perf_counter() - t0) / max(count, 1)}


def measure_synthetic(n_tasks: int, rows_per_task: int | None) -> dict[str, Any]:
    """Every signal's Spearman on the held-out synthetic tasks' shipped rows (``bench_tuned_steps.synthetic_sets``),
    per task."""
    per_task = {name: _score([looks(probe, p, 0, 64) for p in policies], y)
                for name, probe, policies, y in synthetic_sets(n_tasks, rows_per_task)}
    for name, scores in per_task.items():
        print(f"synthetic {name}: " + ", ".join(f"{v:.3f}" for v in scores.values()), flush=True)
    return {"tasks": list(per_task), "per_task": per_task,
            "mean_spearman": {k: float(np.mean([v[k] for v in per_task.values()])) for k in SIGNALS},
            "better_by_0.02": {k: int(sum(v[k] > v[DEFAULT] + 0.02 for v in per_task.values())) for k in SIGNALS},
            "worse_by_0.02": {k: int(sum(v[k] < v[DEFAULT] - 0.02 for v in per_task.values())) for k in SIGNALS}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_query_arguments(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = load_runs(RUNS)
    per_task = {name: measure_task(name, runs, args.runs_per_task) for name in args.tasks}
    synthetic = measure_synthetic(args.synthetic, args.synthetic_rows) if args.synthetic else None
    mean = {k: float(np.mean([v["spearman"][k] for v in per_task.values()])) for k in SIGNALS}
    result = {"tasks": args.tasks, "shots": SHOTS, "mean_spearman": mean, "per_task": per_task,
              "synthetic": synthetic, "machine": machine(),
              "seeds": "each trial replayed with its run's seed (bench_warmstart.py random runs); synthetic rows "
                       "with the build's seed 0"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuned_signals.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = ["# What the tuned proxy's student says besides its accuracy (Spearman with fine-tuned retention)", "",
             "Each signal of the tuned proxy's student, scored alone as a ranker of the held-out real trials of "
             f"`bench_warmstart.py`'s random runs (query: all but each run's first {SHOTS}; every trial replayed "
             "with its run's seed and the task's batch size; `experiments/bench_tuned_signals.py`). 'Half the "
             "steps' is a second look on the way to the tuned proxy's steps; the slopes extrapolate from it.", "",
             "| signal | mean Spearman | " + " | ".join(args.tasks) + " |",
             "|---|---|" + "---|" * len(args.tasks)]
    lines += [f"| {k} | {mean[k]:.3f} | " + " | ".join(f"{per_task[t]['spearman'][k]:.3f}" for t in args.tasks)
              + " |" for k in SIGNALS]
    if synthetic:
        lines += ["", f"## On {len(synthetic['tasks'])} held-out synthetic tasks", "",
                  "Their shipped rows, each student replayed as the build's trial ran it: mean Spearman over tasks, "
                  "and on how many tasks a signal ranks better or worse than the accuracy by more than 0.02.", "",
                  "| signal | mean Spearman | better | worse |", "|---|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {synthetic['better_by_0.02'][k]} | {synthetic['worse_by_0.02'][k]} |"
                  for k, v in synthetic["mean_spearman"].items()]
    better = [k for k in SIGNALS if mean[k] > mean[DEFAULT]
              and (synthetic is None or synthetic["mean_spearman"][k] > synthetic["mean_spearman"][DEFAULT])]
    where = "on the zoo's trials and on the synthetic tasks" if synthetic else "on the zoo's trials"
    lines += ["", f"Better than the accuracy {where}: " + (", ".join(better) if better else
                                                          "none, so the tuned proxy stays its accuracy.")]
    (args.out / "tuned_signals.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
