"""How a grown history updates the default (Reptile) predictor: continued meta-training against a full refit.

A search whose history holds more than the shipped meta-dataset (``History.collect``: every finished search
joins it) does not refit the Reptile predictor from scratch (about 20–30 s on 2 cores for the shipped ~12 500 rows):
it continues the pretrained meta-training for :data:`~metacompress.learners.meta.reptile.FLYWHEEL_EPOCHS` epochs
on the grown history (``warm_start``). This benchmark checks that choice on held-out tasks.

For each benchmark task ``T`` and a second task ``A`` (the next one in the list), the "shipped" predictor is fit
on the meta-dataset without ``T`` and ``A``; the history then grows by ``A``'s rows (a finished search on
another task), and ``T`` is scored by (a) the shipped predictor as it is, (b) the shipped predictor continued on
the grown history (what a search does), (c) a full refit on the grown history. Score: Spearman of predicted vs
real retention on ``T``'s real trials (the ``random`` runs of ``bench_warmstart.py``, zero-shot), and the
seconds each update took. Seed 0 for every fit; CPU, one torch thread. Writes ``results/flywheel.json``/``.md``.

Usage::

    python experiments/bench_flywheel.py
    python experiments/bench_flywheel.py --tasks wine-mlp --meta-epochs 2 --out /tmp/f   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_warmstart import RESULTS, RUNS, TASKS, _rank_scores, load_runs, real_trial_sets


def _score(model: Any, sets: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([_rank_scores(model.predict(X), y)[0] for X, y in sets]))


def main(argv: list[str] | None = None) -> None:
    from metacompress.learners.meta import History, make_predictor
    from metacompress.learners.meta.reptile import FLYWHEEL_EPOCHS, FLYWHEEL_META_LR, ReptilePredictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, metavar="TASK")
    ap.add_argument("--meta-epochs", type=int, default=ReptilePredictor().meta_epochs,
                    help="meta-epochs of the shipped and the refit predictor (the default's; fewer for a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = load_runs(RUNS)
    shipped = History.shipped()
    rows: dict[str, dict[str, Any]] = {}
    fresh = lambda: make_predictor("reptile", random_state=0, meta_epochs=args.meta_epochs)  # noqa: E731
    for held in args.tasks:
        grown_by = TASKS[(TASKS.index(held) + 1) % len(TASKS)]
        sets = real_trial_sets(held, runs)
        base = shipped.subset([t for t in shipped.tasks if t not in (held, grown_by)])
        grown = shipped.subset([t for t in shipped.tasks if t != held])
        t0 = time.perf_counter()
        pretrained = fresh().fit(base.X(), base.y(), base.groups())
        t1 = time.perf_counter()
        continued = fresh().fit(base.X(), base.y(), base.groups())
        continued.set_params(warm_start=True, meta_epochs=FLYWHEEL_EPOCHS, meta_lr=FLYWHEEL_META_LR)
        t2 = time.perf_counter()
        continued.fit(grown.X(), grown.y(), grown.groups())
        t3 = time.perf_counter()
        refit = fresh().fit(grown.X(), grown.y(), grown.groups())
        t4 = time.perf_counter()
        rows[held] = {"grown_by": grown_by, "rows_added": len(grown) - len(base),
                      "shipped": _score(pretrained, sets), "continued": _score(continued, sets),
                      "refit": _score(refit, sets), "fit_s": round(t1 - t0, 1), "continue_s": round(t3 - t2, 1),
                      "refit_s": round(t4 - t3, 1)}
        print(held, rows[held], flush=True)
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("shipped", "continued", "refit",
                                                                        "continue_s", "refit_s")}
    out = {"per_task": rows, "mean": mean, "flywheel_epochs": FLYWHEEL_EPOCHS, "flywheel_meta_lr": FLYWHEEL_META_LR,
           "seed": 0, "threads": 1, "meta_epochs": args.meta_epochs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flywheel.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    lines = ["# The flywheel: updating the Reptile predictor when the history grows", "",
             f"Held-out task T; the history grows by another task's rows. Spearman of predicted vs real retention "
             f"on T's real trials (zero-shot). Continued = the shipped predictor meta-trained {FLYWHEEL_EPOCHS} "
             f"more epochs (initial step {FLYWHEEL_META_LR}) on the grown history, what a search does; refit = "
             f"from scratch ({args.meta_epochs} epochs). One torch thread, seed 0 (`experiments/bench_flywheel.py`).", "",
             "| held-out task | grown by (rows) | shipped | continued | refit | continue s | refit s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t} | {r['grown_by']} ({r['rows_added']}) | {r['shipped']:.3f} | {r['continued']:.3f} | "
              f"{r['refit']:.3f} | {r['continue_s']} | {r['refit_s']} |" for t, r in rows.items()]
    lines += [f"| **mean** | | {mean['shipped']:.3f} | {mean['continued']:.3f} | {mean['refit']:.3f} | "
              f"{mean['continue_s']:.1f} | {mean['refit_s']:.1f} |"]
    (args.out / "flywheel.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
