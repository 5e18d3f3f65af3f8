"""Predictor ablations on held-out real trials: how many synthetic tasks, how many Reptile meta-epochs, an ensemble.

The same score as ``bench_warmstart.py``'s predictor quality: for each of its 6 held-out zoo tasks, the predictor
is fit on the shipped meta-dataset without that task, and ranks the task's real trials of the ``random`` runs
(query = all but the first 5 trials of each run; after 5 = adapted on those 5). Spearman, mean over runs, then
over tasks. Variants:

* ``gbm, K synthetic``: the GBM with only the first K regular synthetic tasks (and their few-shot variants) of
  :data:`metacompress.learners.tasks.SYNTHETIC_TASKS` in the history, K in 0, 16, 32, 64 (0 = the zoo alone);
* ``reptile, E meta-epochs``: the Reptile predictor with E = 30, 60, 150 (150 is the default);
* ``gbm, depth D``: deeper trees than the default (depth 4, 10 rows per leaf);
* ``mean of gbm and reptile``: the mean of the two defaults' predictions.

The GBM's tree settings are also scored where choosing them does not peek at the zoo: leave-one-task-out over 24
synthetic tasks (drawn with seed 0), Spearman on their space-filling rows.

Seed 0 for every fit; CPU, one torch thread. Writes ``results/predictors.json`` and ``.md`` (about 10 minutes on 2
cores).

Usage::

    python experiments/bench_predictors.py
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from bench_warmstart import RESULTS, RUNS, TASKS, _rank_scores, load_runs, loto_history, real_trial_sets

SHOTS = 5


class _Mean:
    """The mean of several predictors' predictions (adapted member by member)."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(X) for m in self.members], axis=0)

    def adapt(self, X: np.ndarray, y: np.ndarray) -> _Mean:
        return _Mean([m.adapt(X, y) for m in self.members])


def _history(held_out: str, n_synthetic: int | None) -> Any:
    """:func:`loto_history` of ``held_out`` without, given ``n_synthetic``, the synthetic tasks past it."""
    from metacompress.learners.tasks import SYNTHETIC_TASKS

    history = loto_history(held_out)
    if n_synthetic is None:
        return history
    number = {t: int(t.split("-")[1]) for t in SYNTHETIC_TASKS}  # "synth-07-mlp", "synth-05-5w10s"
    return history.subset([t for t in history.tasks if number.get(t, 0) <= n_synthetic])


def _fit(held_out: str, kind: str, n_synthetic: int | None = None, **params: Any) -> Any:
    from metacompress.learners.meta import make_predictor

    h = _history(held_out, n_synthetic)
    return make_predictor(kind, random_state=0, **params).fit(h.X(), h.y(), h.groups())


def _variants(held_out: str) -> dict[str, Any]:
    out = {f"gbm, {k} synthetic tasks": _fit(held_out, "gbm", k) for k in (0, 16, 32, 64)}
    for depth, leaf in ((6, 20), (8, 20)):
        out[f"gbm, depth {depth}, {leaf} rows per leaf"] = _fit(held_out, "gbm", max_depth=depth,
                                                               min_samples_leaf=leaf)
    for epochs in (30, 60, 150):
        out[f"reptile, {epochs} meta-epochs"] = _fit(held_out, "reptile", meta_epochs=epochs)
    out["mean of gbm and reptile"] = _Mean([out["gbm, 64 synthetic tasks"], out["reptile, 150 meta-epochs"]])
    return out


#: GBM tree settings compared on held-out synthetic tasks (the default first).
TREES = {"depth 4, 10 rows per leaf (default)": {}, "depth 6, 20 rows per leaf": {"max_depth": 6,
         "min_samples_leaf": 20}, "depth 8, 20 rows per leaf": {"max_depth": 8, "min_samples_leaf": 20}}


def synthetic_validation(n_tasks: int = 24) -> dict[str, float]:
    """Mean Spearman of each :data:`TREES` GBM on ``n_tasks`` held-out synthetic tasks (their shipped rows)."""
    from metacompress.learners.meta import History, make_predictor
    from metacompress.learners.tasks import SYNTHETIC_TASKS

    shipped = History.shipped()
    X, y, g = shipped.X(), shipped.y(), shipped.groups()
    held = np.random.default_rng(0).choice([t for t in shipped.tasks if t in SYNTHETIC_TASKS], n_tasks,
                                           replace=False)
    out = {}
    for label, params in TREES.items():
        rhos = []
        for t in held:
            test = g == t
            model = make_predictor("gbm", random_state=0, **params).fit(X[~test], y[~test], g[~test])
            rhos.append(_rank_scores(model.predict(X[test]), y[test])[0])
        out[label] = float(np.mean(rhos))
        print(f"synthetic validation, gbm {label}: {out[label]:.3f}", flush=True)
    return out


def main() -> None:
    torch.set_num_threads(1)
    runs = load_runs(RUNS)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for name in TASKS:
        sets = real_trial_sets(name, runs)
        for label, model in _variants(name).items():
            zero, after = [], []
            for X, y in sets:
                q = np.arange(SHOTS, len(y))
                zero.append(_rank_scores(model.predict(X[q]), y[q])[0])
                after.append(_rank_scores(model.adapt(X[:SHOTS], y[:SHOTS]).predict(X[q]), y[q])[0])
            scores.setdefault(label, {})[name] = {"zero_shot": float(np.mean(zero)), "after_5": float(np.mean(after))}
            print(f"{name} {label}: {scores[label][name]}", flush=True)
    mean = {label: {k: float(np.mean([v[k] for v in per.values()])) for k in ("zero_shot", "after_5")}
            for label, per in scores.items()}
    validation = synthetic_validation()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predictors.json").write_text(json.dumps({"tasks": TASKS, "mean": mean, "per_task": scores,
                                                         "synthetic_validation": validation, "seed": 0,
                                                         "shots": SHOTS}, indent=1), encoding="utf-8")
    lines = ["# Predictor ablations (held-out zoo task, Spearman on its real trials)", "",
             "Fit leave-one-task-out on the shipped meta-dataset; the query set and the 5 adaptation trials are "
             "`bench_warmstart.py`'s (the random runs). Seed 0 (`experiments/bench_predictors.py`).", "",
             "| predictor | zero-shot | after 5 | " + " | ".join(TASKS) + " (zero-shot) |",
             "|---|---|---|" + "---|" * len(TASKS)]
    for label, m in mean.items():
        cells = " | ".join(f"{scores[label][t]['zero_shot']:.3f}" for t in TASKS)
        lines.append(f"| {label} | {m['zero_shot']:.3f} | {m['after_5']:.3f} | {cells} |")
    default, best = next(iter(validation.values())), max(validation, key=validation.get)
    verdict = (f"here no setting beats the default by 0.01 (best: {best}), so the default stays"
               if max(validation.values()) - default < 0.01 else f"here {best} is ahead by "
               f"{max(validation.values()) - default:.3f}")
    lines += ["", "The GBM's tree settings where choosing them does not peek at the zoo: leave-one-task-out over 24 "
              "held-out synthetic tasks, Spearman on their space-filling rows. On the zoo above, deeper trees gain "
              f"only through breast-cancer (noise ceiling 0.63–0.70, warmstart.md); {verdict}.", "",
              "| GBM trees | held-out synthetic tasks, mean Spearman |", "|---|---|"]
    lines += [f"| {label} | {rho:.3f} |" for label, rho in validation.items()]
    (RESULTS / "predictors.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
