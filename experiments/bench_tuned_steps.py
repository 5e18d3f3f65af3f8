"""How many fine-tuning steps the tuned proxy should take: its rank quality against its cost.

The tuned proxy (:meth:`metacompress.learners.meta.ProxyProbe.tuned`) is a candidate's probe-row retention after the
first few optimizer steps of its own fine-tuning; the product takes :func:`~metacompress.learners.meta.proxy.
tuned_steps` = min(20, ½ of the run's steps), at least 1 (min(10, ¼) before). This script measures it again with
other step counts on the real trials of ``bench_warmstart.py``'s ``random`` runs (the query sets of its predictor
quality: every trial but each run's first 5) and scores each setting alone as a ranker of the trials' fine-tuned
retention: Spearman, mean over runs, then over tasks; and its cost, seconds per measurement (CPU, one torch
thread). Each measurement replays the start of the trial as the run ran it (its seed, the task's batch size), so
the default setting is the tuned proxy a search records (and ``bench_warmstart.py``'s ``tuned`` ranker scores).

Settings: 10 steps at most a quarter of the run (the default before); 20 steps at most a quarter, 0.35, half (the
default) of the run; 10 steps at most half; 20 steps at most the whole run (on the small tasks that is the trial).

Writes ``results/tuned_steps.json`` and ``.md`` (about 10 minutes on this 2-core machine).

Usage::

    python experiments/bench_tuned_steps.py
    python experiments/bench_tuned_steps.py --tasks wine-mlp --runs-per-task 1 --out /tmp/t   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_warmstart import PROXY, RESULTS, RUNS, TASKS, _rank_scores, _setup, load_runs
from benchinfo import machine

SHOTS = 5
#: Setting label -> (steps at most, share of the run's steps at most).
BEFORE = "10 steps, ≤ ¼ of the run (the default before)"
SETTINGS = {BEFORE: (10, 0.25), "20 steps, ≤ ¼ of the run": (20, 0.25),
            "20 steps, ≤ 0.35 of the run": (20, 0.35), "10 steps, ≤ ½ of the run": (10, 0.5),
            "20 steps, ≤ ½ of the run (default)": (20, 0.5), "20 steps, ≤ the whole run": (20, 1.0)}


#: Closing paragraphs of tuned_steps.md: the choice and its cost.
NOTES = [
    "**The choice.** The default was 10 steps and at most a quarter of the run. Half of the run, at most 20 "
    "steps, ranks the zoo's real trials and the held-out synthetic tasks better (tables above); it is a lower "
    "fidelity of the trial, as in successive halving: half of its fine-tuning at most, none of its evaluation. "
    "The zoo's trials are the benchmark's own query sets, so the synthetic tasks are the check that does not peek "
    "at them. Its cost is the warm start's time (about twice the steps per tuned candidate; "
    "[warmstart.md](warmstart.md), section 'Time, not trials'). 20 steps with no cap but the whole run is no proxy: "
    "on wine (5–10 steps per run in the benchmark) and on breast-cancer's one-epoch runs (15 steps) that is the "
    "whole fine-tuning, the trial's outcome itself.",
]


def measure_task(name: str, runs: list[dict[str, Any]], max_runs: int | None) -> dict[str, Any]:
    """Each setting's tuned proxy of every finished trial of ``name``'s random runs, and its rank quality."""
    from metacompress.learners.meta import ProxyProbe, tuned_steps

    s = _setup(name)
    probe, batch_size = ProxyProbe(s["task"]), s["cfg"].train.batch_size
    chosen = [r for r in runs if r["task"] == name and r["method"] == "random" and r.get("kind") == "real"]
    rho: dict[str, list[float]] = {label: [] for label in (*SETTINGS, "proxy (no fine-tuning)")}
    seconds = {label: 0.0 for label in SETTINGS}
    count = 0
    for r in chosen[:max_runs]:
        trials = [t for t in r["trials"] if t["metrics"] is not None][SHOTS:]
        y = np.array([t["metrics"]["accuracy"] / r["teacher"]["accuracy"] for t in trials])
        proxy = [t["metrics"][PROXY] if PROXY in t["metrics"] else probe(s["space"].decode(t["params"]))
                 for t in trials]  # the random runs predate the validation-row proxies: measured as a trial now records it
        rho["proxy (no fine-tuning)"].append(_rank_scores(np.array(proxy), y)[0])
        for label, (cap, share) in SETTINGS.items():
            values = []
            for t in trials:
                policy = s["space"].decode(t["params"])
                a = time.perf_counter()
                values.append(probe.tuned(policy, seed=r["seed"], batch_size=batch_size,
                                          steps=tuned_steps(policy.epochs, len(s["task"].train), batch_size,
                                                            cap=cap, share=share)))
                seconds[label] += time.perf_counter() - a
            rho[label].append(_rank_scores(np.array(values), y)[0])
        count += len(trials)
        print(f"{name} seed {r['seed']}: " + ", ".join(f"{k.split(',')[0]} {v[-1]:.3f}" for k, v in rho.items()),
              flush=True)
    return {"spearman": {k: float(np.mean(v)) for k, v in rho.items()}, "trials": count, "runs": len(chosen[:max_runs]),
            "seconds_per_measurement": {k: v / max(count, 1) for k, v in seconds.items()}}


def synthetic_sets(n_tasks: int, rows_per_task: int | None) -> Iterator[tuple[str, Any, list[Any], np.ndarray]]:
    """(name, proxy probe, policies, fine-tuned retention) of the shipped rows (at most ``rows_per_task``) of each
    of the ``n_tasks`` held-out synthetic tasks the GBM's settings and ``adapt``'s rule are chosen on
    (``bench_predictors.held_out_synthetic_tasks``: none is a zoo task, so choosing there does not peek at the
    zoo). Their trials ran with the build's seed 0 and batch size 64."""
    from bench_predictors import held_out_synthetic_tasks
    from metacompress.learners import describe_layers, load_task
    from metacompress.learners.meta import History, ProxyProbe
    from metacompress.spaces import CompressionPolicy

    shipped = History.shipped()
    frame = shipped.frame
    for name in held_out_synthetic_tasks(shipped, n_tasks):
        task = load_task(name)
        names = [i.name for i in describe_layers(task.teacher, task.example_input(2))]
        rows = frame[(frame["task"] == name) & (frame["policy"] != "")].head(rows_per_task)
        yield (name, ProxyProbe(task), [CompressionPolicy.from_dict(json.loads(p), names) for p in rows["policy"]],
               rows["retention"].to_numpy(dtype=float))


def add_query_arguments(ap: argparse.ArgumentParser) -> None:
    """The query-set options this script and ``bench_tuned_signals.py`` share."""
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, metavar="TASK")
    ap.add_argument("--runs-per-task", type=int, default=None, help="at most this many random runs per task")
    ap.add_argument("--synthetic", type=int, default=24, metavar="N",
                    help="held-out synthetic tasks to check the settings on as well (0: none)")
    ap.add_argument("--synthetic-rows", type=int, default=None, metavar="N", help="at most N rows of each")
    ap.add_argument("--out", type=Path, default=RESULTS)


def measure_synthetic(n_tasks: int, rows_per_task: int | None) -> dict[str, Any]:
    """Each setting's tuned proxy on the held-out synthetic tasks' rows (:func:`synthetic_sets`), measured as the
    build's trials ran them, ranked against each row's fine-tuned retention: Spearman per task, then the mean."""
    from metacompress.learners.meta import tuned_steps

    rho: dict[str, dict[str, float]] = {label: {} for label in SETTINGS}
    for name, probe, policies, y in synthetic_sets(n_tasks, rows_per_task):
        task = probe.task
        for label, (cap, share) in SETTINGS.items():
            values = [probe.tuned(p, seed=0, batch_size=64,
                                  steps=tuned_steps(p.epochs, len(task.train), 64, cap=cap, share=share))
                      for p in policies]
            rho[label][name] = _rank_scores(np.array(values), y)[0]
        print(f"synthetic {name}: " + ", ".join(f"{v[name]:.3f}" for v in rho.values()), flush=True)
    return {"tasks": list(next(iter(rho.values()))), "per_task": rho,
            "mean_spearman": {k: float(np.mean(list(v.values()))) for k, v in rho.items()},
            "better_by_0.02_than_the_default_before": {
                k: int(sum(v[t] > rho[BEFORE][t] + 0.02 for t in v)) for k, v in rho.items()},
            "worse_by_0.02_than_the_default_before": {
                k: int(sum(v[t] < rho[BEFORE][t] - 0.02 for t in v)) for k, v in rho.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_query_arguments(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = load_runs(RUNS)
    per_task = {name: measure_task(name, runs, args.runs_per_task) for name in args.tasks}
    synthetic = measure_synthetic(args.synthetic, args.synthetic_rows) if args.synthetic else None
    labels = list(next(iter(per_task.values()))["spearman"])
    mean = {k: float(np.mean([v["spearman"][k] for v in per_task.values()])) for k in labels}
    others = [t for t in args.tasks if t != "breast-cancer-mlp"]
    mean_others = {k: float(np.mean([per_task[t]["spearman"][k] for t in others])) for k in labels} if others else {}
    cost = {k: float(np.mean([v["seconds_per_measurement"][k] for v in per_task.values()])) for k in SETTINGS}
    result = {"tasks": args.tasks, "shots": SHOTS, "settings": {k: list(v) for k, v in SETTINGS.items()},
              "mean_spearman": mean, "mean_spearman_without_breast_cancer": mean_others,
              "seconds_per_measurement": cost, "per_task": per_task, "synthetic": synthetic, "machine": machine(),
              "seeds": "each trial replayed with its run's seed (bench_warmstart.py random runs)"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuned_steps.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = ["# The tuned proxy's step count (held-out real trials, Spearman with fine-tuned retention)", "",
             "Each setting's tuned proxy measured again on the real trials of `bench_warmstart.py`'s random runs "
             f"(query: all but each run's first {SHOTS}; every trial replayed with its run's seed and the task's "
             "batch size) and scored alone as a ranker (`experiments/bench_tuned_steps.py`); the default setting is "
             "the tuned proxy a search records. Cost: seconds per measurement on this machine, one torch thread.",
             "",
             "| setting | mean Spearman | without breast-cancer | " + " | ".join(args.tasks) + " | s per measurement |",
             "|---|---|---|" + "---|" * len(args.tasks) + "---|"]
    for k in labels:
        cells = " | ".join(f"{per_task[t]['spearman'][k]:.3f}" for t in args.tasks)
        c = f"{cost[k]:.3f}" if k in cost else "–"
        lines.append(f"| {k} | {mean[k]:.3f} | {mean_others.get(k, float('nan')):.3f} | {cells} | {c} |")
    if synthetic:
        lines += ["", f"## The same settings on {len(synthetic['tasks'])} held-out synthetic tasks", "",
                  "The shipped rows of the synthetic tasks the GBM's settings are chosen on (none is a zoo task), each "
                  "row's tuned proxy measured again as the build's trial ran it, ranked against its fine-tuned "
                  "retention: mean Spearman over tasks, and on how many tasks a setting ranks better or worse than "
                  "the default before by more than 0.02.", "",
                  "| setting | mean Spearman | better | worse |", "|---|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {synthetic['better_by_0.02_than_the_default_before'][k]} | "
                  f"{synthetic['worse_by_0.02_than_the_default_before'][k]} |"
                  for k, v in synthetic["mean_spearman"].items()]
    lines += ["", *NOTES]
    (args.out / "tuned_steps.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
