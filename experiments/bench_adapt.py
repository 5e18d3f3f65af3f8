"""How ``GBMRetentionPredictor.adapt`` should use a new task's first trials, chosen on held-out synthetic tasks.

After a few trials of a new task, ``adapt`` lets its measurement (the calibrated proxy, or the calibrated tuned
proxy) and its tier's trees vote on those trials: the share of bootstrap resamples on which the measurement alone
misorders fewer pairs than the trees alone. The question is what to do with that share. Rules compared, each on the
same vote:

* ``prior``: ignore it (the tier's weight as shipped: the tuned proxy's tier is the measurement, weight 1; the
  untuned proxy's tier the trees, weight 0);
* ``blend``: the share itself as the weight (``adapt`` before this script);
* ``pick, majority``: the ranker that wins more than half of the resamples, alone;
* ``pick, decisive D``: the ranker that wins at least a share D of the resamples, alone; otherwise the prior
  (D = 0.8 is ``adapt``'s rule, :data:`~metacompress.learners.meta.predictors.ADAPT_DECISIVE`; its row comes from
  ``adapt`` itself, the others re-weigh the same adapted copy).

Held out: 24 synthetic tasks (drawn with seed 0, the tasks ``bench_predictors.py`` validates the trees' settings on),
so choosing the rule does not peek at the zoo, whose real trials ``bench_warmstart.py`` scores afterwards. Each
task's GBM (the default settings, seed 0) is fit on the shipped meta-dataset without it. For each of 5, 10, 20 and
40 shots, 20 random draws of that many of the task's 96 rows adapt it (draws seeded 1 + task index), and Spearman
is scored on the task's other rows: the tuned tier on rows with both proxies, the proxy's tier on the same rows with
the tuned proxy left out. Mean over draws, then over tasks; ``harmed`` counts the tasks a rule ranks worse than the
prior by more than 0.02. CPU; about 8 minutes on 2 cores. Writes ``results/adapt.json`` and ``.md``.

Usage::

    python experiments/bench_adapt.py
    python experiments/bench_adapt.py --tasks 2 --draws 2 --out /tmp/a   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_predictors import held_out_synthetic_tasks
from bench_warmstart import RESULTS, _rank_scores
from benchinfo import machine

SHOTS = (5, 10, 20, 40)
DECISIVE = (0.7, 0.8, 0.9)


def rules() -> dict[str, Any]:
    """Rule name -> weight of the measurement given ``(vote, prior)``; None: ``adapt``'s own weight."""
    from metacompress.learners.meta.predictors import ADAPT_DECISIVE, pick_weight

    out: dict[str, Any] = {"prior": lambda vote, prior: prior, "blend": lambda vote, prior: vote,
                           "pick, majority": lambda vote, prior: pick_weight(vote, prior, 0.5 + 1e-9)}
    for d in DECISIVE:
        out[f"pick, decisive {d}"] = None if d == ADAPT_DECISIVE else (
            lambda vote, prior, d=d: pick_weight(vote, prior, d))
    return out


def score_task(model: Any, X: np.ndarray, y: np.ndarray, tier: int, shots: int, draws: int, seed: int
               ) -> dict[str, float]:
    """Mean Spearman over ``draws`` supports of ``shots`` rows, on the other rows, of each rule for ``tier``."""
    out: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed)
    compared = rules()
    for _ in range(draws):
        order = rng.permutation(len(y))
        support, query = order[:shots], order[shots:]
        adapted = model.adapt(X[support], y[support])
        vote, prior = adapted.adapted_votes_[tier], model._proxy_weight(tier)
        for name, rule in compared.items():
            m = adapted
            if rule is not None:
                m = copy.copy(adapted)
                m.adapted_proxy_weights_ = {**adapted.adapted_proxy_weights_, tier: rule(vote, prior)}
            out.setdefault(name, []).append(_rank_scores(m.predict(X[query]), y[query])[0])
    return {name: float(np.mean(v)) for name, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    from metacompress.learners.meta import History, make_predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=24, help="held-out synthetic tasks (default 24)")
    ap.add_argument("--draws", type=int, default=20, help="random supports per task and size (default 20)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    shipped = History.shipped()
    X, y, g = shipped.X(), shipped.y(), shipped.groups()
    held = held_out_synthetic_tasks(shipped, args.tasks)
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for i, task in enumerate(held):
        test = g == task
        model = make_predictor("gbm", random_state=0).fit(X[~test], y[~test], g[~test])
        both = X[test]
        untuned = both.copy()
        untuned[:, -1] = np.nan  # the same rows as the shortlist sees them: the proxy measured, not the tuned one
        for tier, rows in ((2, both), (1, untuned)):
            for shots in SHOTS:
                key = f"tier {tier}, {shots} shots"
                per_task.setdefault(key, {})[task] = score_task(model, rows, y[test], tier, shots, args.draws,
                                                                1 + i)
        print(f"{task}: " + "; ".join(f"{k}: {v[task]['prior']:.3f} prior, "
                                      f"{v[task]['pick, decisive 0.8']:.3f} pick 0.8, {v[task]['blend']:.3f} blend"
                                      for k, v in per_task.items() if k.endswith(" 5 shots")), flush=True)
    names = list(rules())
    mean = {key: {n: float(np.mean([v[n] for v in tasks.values()])) for n in names} for key, tasks in per_task.items()}
    harmed = {key: {n: int(sum(v[n] < v["prior"] - 0.02 for v in tasks.values())) for n in names}
              for key, tasks in per_task.items()}
    result = {"held_out": held, "shots": list(SHOTS), "draws": args.draws, "seed": 0, "rules": names,
              "mean_spearman": mean, "harmed": harmed, "per_task": per_task,
              "cost_s": round(time.perf_counter() - t0, 1), "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapt.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    write_md(result, args.out / "adapt.md")
    print((args.out / "adapt.md").read_text(encoding="utf-8"))


def write_md(r: dict[str, Any], path: Path) -> None:
    keys = list(r["mean_spearman"])
    lines = ["# Adapting the GBM to a new task's first trials: which rule (held-out synthetic tasks)", "",
             f"{len(r['held_out'])} held-out synthetic tasks (seed 0), each GBM fit on the shipped meta-dataset "
             f"without its task; {r['draws']} random supports per task and size, Spearman on the task's other rows; "
             "mean over draws, then tasks. In brackets: tasks ranked worse than with the prior by more than 0.02. "
             "Tier 2 is the tuned proxy's (prior: the measurement), tier 1 the proxy's (prior: the trees). "
             f"`python experiments/bench_adapt.py` ({r['cost_s']:.0f} s).", "",
             "| rule | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for n in r["rules"]:
        lines.append(f"| {n} | " + " | ".join(f"{r['mean_spearman'][k][n]:.4f} ({r['harmed'][k][n]})" for k in keys)
                     + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
