"""A warm start's fixed costs: scoring 10 000 candidates (target < 2 s), the task's probes, loading the predictor.

For each benchmark task (``bench_warmstart.TASKS``, their benchmark spaces), timed separately, median over
``--repeats`` runs after one untimed warm-up:

* ``pool_s``: a scrambled Sobol pool of ``--n`` candidates of the space, their exact ``size_bytes`` and their
  predictor inputs (:func:`~metacompress.learners.meta.propose.pool_inputs`, seed = the repeat's index);
* ``score_s``: the shipped GBM's predicted retention of every candidate, as loaded by a search (its trees as
  arrays, ``gbm.npz``), and ``score_sklearn_s`` the same trees as scikit-learn estimators (a refit on the shipped
  meta-dataset: bit for bit the same predictions, checked);
* ``front_s``: the predicted Pareto front over (predicted retention ↑, exact size ↓) and the hypervolume order of
  its points (:func:`~metacompress.learners.meta.hypervolume_order`);
* ``total_s`` = pool + score + front: the target, < 2 s for 10 000 candidates.

And ``probes_s``: the task's per-layer sensitivity probes and meta-features
(:func:`~metacompress.learners.meta.layer_sensitivity`, :func:`~metacompress.learners.meta.task_meta_features`;
their cache cleared each time, as a search pays them once), which a warm start computes before its pool.

Once: ``load_s``, loading the shipped GBM (:func:`~metacompress.learners.meta.load_default_predictor`), and
``refit_s``, fitting it on the shipped meta-dataset instead (median of 3; what every warm start did before it
shipped fitted).
CPU, one torch thread; about a minute on 2 cores. Writes ``results/pool.json`` and ``.md``.

Usage::

    python experiments/bench_pool.py
    python experiments/bench_pool.py --tasks wine-mlp --repeats 2 --out /tmp/p   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_warmstart import RESULTS, TASKS, _setup
from benchinfo import machine


def _timed(fn: Any) -> tuple[float, Any]:
    a = time.perf_counter()
    out = fn()
    return time.perf_counter() - a, out


def task_timings(name: str, gbm: Any, fitted: Any, n: int, repeats: int) -> dict[str, Any]:
    """Median seconds of each step on ``name``'s space over ``repeats`` pools (one untimed warm-up first)."""
    from metacompress.learners.meta import (
        SizeModel,
        clear_sensitivity_cache,
        hypervolume_order,
        layer_sensitivity,
        pareto_indices,
        task_meta_features,
    )
    from metacompress.learners.meta.propose import pool_inputs

    s = _setup(name)
    task, space = s["task"], s["space"]
    layers = list(space.layers)

    def probes() -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        clear_sensitivity_cache()  # a search probes its teacher once: uncached
        sensitivity = layer_sensitivity(task, layers, seed=0)
        return sensitivity, task_meta_features(task, seed=0, layers=layers, sensitivity=sensitivity)

    probes()  # warm-up
    probes_s = float(np.median([_timed(probes)[0] for _ in range(repeats)]))
    sensitivity, features = probes()
    size_model = SizeModel(task.teacher, task.example_input(2))
    times: dict[str, list[float]] = {"pool_s": [], "score_s": [], "score_sklearn_s": [], "front_s": []}
    same = True
    for r in range(repeats + 1):
        pool_s, (_, size, X) = _timed(lambda r=r: pool_inputs(space, layers, features, size_model, sensitivity, n, r))
        score_s, retention = _timed(lambda X=X: gbm.predict(X))
        score_sklearn_s, reference = _timed(lambda X=X: fitted.predict(X))
        same = same and bool(np.array_equal(retention, reference))

        def front(retention: np.ndarray = retention, size: np.ndarray = size) -> list[int]:
            idx = pareto_indices(retention, size)
            return [int(idx[i]) for i in hypervolume_order(np.clip(retention[idx], 0, 1),
                                                          size[idx] / size_model.teacher_bytes)]

        front_s, points = _timed(front)
        if r:  # the first pool warms caches up
            for key, value in zip(times, (pool_s, score_s, score_sklearn_s, front_s)):
                times[key].append(value)
    out: dict[str, Any] = {key: float(np.median(v)) for key, v in times.items()}
    out["total_s"] = out["pool_s"] + out["score_s"] + out["front_s"]
    out["probes_s"] = probes_s
    out |= {"n_candidates": n, "n_layers": len(layers), "front_points": len(points), "identical_predictions": same}
    return out


def main(argv: list[str] | None = None) -> None:
    from metacompress.learners.meta import History, load_default_predictor, make_predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, metavar="TASK")
    ap.add_argument("--n", type=int, default=10_000, help="candidates per pool")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    shipped = History.shipped()
    load_default_predictor("gbm")  # imports and file cache warm, as in a search that already runs
    load_s = float(np.median([_timed(lambda: load_default_predictor("gbm"))[0] for _ in range(args.repeats)]))
    gbm = load_default_predictor("gbm")
    refits = [_timed(lambda: make_predictor("gbm", **gbm.get_params()).fit(shipped.X(), shipped.y(),
                                                                          shipped.groups())) for _ in range(3)]
    refit_s, fitted = float(np.median([t for t, _ in refits])), refits[0][1]
    per_task = {}
    for name in args.tasks:
        per_task[name] = task_timings(name, gbm, fitted, args.n, args.repeats)
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in per_task[name].items()}, flush=True)
    worst = max(r["total_s"] for r in per_task.values())
    out = {"per_task": per_task, "load_s": load_s, "refit_s": refit_s, "worst_total_s": worst,
           "target_s": 2.0, "met": worst < 2.0, "n_candidates": args.n, "repeats": args.repeats,
           "seeds": list(range(1, args.repeats + 1)), "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pool.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    m = out["machine"]
    lines = ["# A warm start's fixed costs: the candidate pool, the probes, the predictor", "",
             f"`python experiments/bench_pool.py --n {args.n} --repeats {args.repeats}` — {m['cpu']}, torch "
             f"{m['torch']}, 1 thread; load at the end {m['loadavg']}. Median seconds over {args.repeats} pools "
             f"(Sobol seeds 1–{args.repeats}) after one warm-up; see the script's docstring for each step.", "",
             "| task | layers | pool + sizes + inputs | score (shipped arrays) | score (scikit-learn trees) | "
             "predicted front + order (points) | **total** | probes + meta-features (before the pool) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t} | {r['n_layers']} | {r['pool_s']:.3f} | {r['score_s']:.3f} | {r['score_sklearn_s']:.3f} | "
              f"{r['front_s']:.3f} ({r['front_points']}) | **{r['total_s']:.3f}** | {r['probes_s']:.3f} |"
              for t, r in per_task.items()]
    identical = all(r["identical_predictions"] for r in per_task.values())
    lines += ["", f"Worst total **{worst:.2f} s** for {args.n} candidates (target < 2 s: "
              f"{'met' if out['met'] else 'not met'}). The shipped arrays' predictions are "
              f"{'bit for bit' if identical else 'NOT'} the scikit-learn trees'. Loading the shipped GBM: "
              f"{load_s:.3f} s (median of {args.repeats}); fitting it on the shipped meta-dataset instead: "
              f"{refit_s:.2f} s (median of 3)."]
    (args.out / "pool.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
