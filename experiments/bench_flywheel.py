"""How a grown history updates the pretrained predictors: continued training against a full refit.

A search whose history holds more than the shipped meta-dataset (``History.collect``: every finished search
joins it) does not refit the pretrained predictor from scratch: the Reptile predictor (about 20–30 s to refit on
2 cores for the shipped ~12 500 rows) continues its meta-training for
:data:`~metacompress.learners.meta.reptile.FLYWHEEL_EPOCHS` epochs on the grown history, and the GBM (about 3 s to
refit) continues its boosting for :data:`~metacompress.learners.meta.predictors.FLYWHEEL_TREES` more iterations on
it (``warm_start`` for both), and keeps the continued trees in the cache folder for the next warm start on the
same history. This benchmark checks those choices on held-out tasks.

For each benchmark task ``T`` and a second task ``A`` (the next one in the list), the "shipped" predictor is fit
on the meta-dataset without ``T`` and ``A``; the history then grows by ``A``'s rows (a finished search on
another task), and ``T`` is scored by (a) the shipped predictor as it is, (b) the shipped predictor continued on
the grown history (what a search does), (c) a full refit on the grown history. Score: Spearman of predicted vs
real retention on ``T``'s real trials (the ``random`` runs of ``bench_warmstart.py``, zero-shot), and the
seconds each update took. The GBM is scored three ways, since where a candidate's tuned proxy is measured its
calibrated measurement decides and the trees only rank what is not: with both proxies (``measured``), without the
tuned one (``untuned``: the warm start's shortlist) and without either (``unmeasured``: its candidate pool). Seed
0 for every fit; CPU, one torch thread. Writes ``results/flywheel.json``/``.md`` (``--kinds gbm``: the GBM's part
only, the Reptile part kept from the last run).

Usage::

    python experiments/bench_flywheel.py
    python experiments/bench_flywheel.py --tasks wine-mlp --meta-epochs 2 --out /tmp/f   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from bench_warmstart import RESULTS, RUNS, TASKS, _rank_scores, load_runs, real_trial_sets
from benchinfo import machine


def _score(model: Any, sets: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([_rank_scores(model.predict(X), y)[0] for X, y in sets]))


#: The GBM's query variants: which measured columns (the proxy, the tuned proxy) are left out (NaN).
GBM_QUERIES = {"measured": 0, "untuned": 1, "unmeasured": 2}


def _score_gbm(model: Any, sets: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    out = {}
    for name, hidden in GBM_QUERIES.items():
        masked = []
        for X, y in sets:
            X = X.copy()
            if hidden:
                X[:, X.shape[1] - hidden:] = np.nan
            masked.append((X, y))
        out[name] = _score(model, masked)
    return out


def gbm_rows(held: str, grown_by: str, shipped: Any, sets: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The GBM's shipped / continued / refit scores on ``held`` after the history grew by ``grown_by``, and the
    seconds of each update: continuing as a search's first warm start on that history does it (boosting, then
    saving the entry in a fresh cache folder), reading that entry as the next warm start does, refitting."""
    from metacompress.learners.meta import make_predictor
    from metacompress.learners.meta.context import _continued
    from metacompress.learners.meta.predictors import FLYWHEEL_TREES

    base = shipped.subset([t for t in shipped.tasks if t not in (held, grown_by)])
    grown = shipped.subset([t for t in shipped.tasks if t != held])
    t0 = time.perf_counter()
    pretrained = make_predictor("gbm", random_state=0).fit(base.X(), base.y(), base.groups())
    t1 = time.perf_counter()
    pretrained.set_params(warm_start=True, max_iter=pretrained.max_iter + FLYWHEEL_TREES)
    again, rows = copy.deepcopy(pretrained), (grown.X(), grown.y(), grown.groups())
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"METACOMPRESS_CACHE": cache}):
        t2 = time.perf_counter()
        continued, _ = _continued(copy.deepcopy(pretrained), *rows)
        t3 = time.perf_counter()
        cached, source = _continued(again, *rows)
        t4 = time.perf_counter()
    assert source.endswith("(read from the cache)"), source
    assert np.array_equal(cached.predict(rows[0]), continued.predict(rows[0]))
    t5 = time.perf_counter()
    refit = make_predictor("gbm", random_state=0).fit(*rows)
    t6 = time.perf_counter()
    return {"grown_by": grown_by, "rows_added": len(grown) - len(base), "shipped": _score_gbm(pretrained, sets),
            "continued": _score_gbm(continued, sets), "refit": _score_gbm(refit, sets), "fit_s": round(t1 - t0, 2),
            "continue_s": round(t3 - t2, 2), "cached_s": round(t4 - t3, 2), "refit_s": round(t6 - t5, 2)}


def _ran_on(part: dict[str, Any]) -> str:
    """' Ran on CPU (load ...).' for a part that recorded its machine (the parts run separately, ``--kinds``)."""
    m = part.get("machine")
    return f" Ran on {m['cpu']} (load {m['loadavg'][0]:.2f} at its end)." if m else ""


def gbm_lines(part: dict[str, Any]) -> list[str]:
    rows, mean = part["per_task"], part["mean"]
    ways = ("shipped", "continued", "refit")
    cells = lambda r: " | ".join(f"{r[w][q]:.3f}" for q in GBM_QUERIES for w in ways)  # noqa: E731
    head = " | ".join(f"{q}: {w}" for q in GBM_QUERIES for w in ways)
    return ["## The GBM (the default)", "",
            f"Continued = the shipped GBM's boosting continued on the grown history ({part['flywheel_trees']} more "
            "iterations on the residuals, isotonic maps refit: `warm_start`), what a search does; refit = from "
            "scratch. Spearman with both proxies measured (where the calibrated tuned proxy decides), without the "
            "tuned proxy (the shortlist) and without either (the candidate pool, where only the trees rank). "
            "Seconds: continue = the first warm start on the grown history (boosting, then saving the continued "
            "trees in the cache folder); cached = the next warm start on the same history (`suggest` then `search`, "
            "a resumed search), which reads them (checked to predict bit for bit the same); refit = from scratch."
            + _ran_on(part), "",
            f"| held-out task | grown by (rows) | {head} | continue s | cached s | refit s |",
            "|---|---|" + "---|" * (3 * len(GBM_QUERIES)) + "---|---|---|"] + [
        f"| {t} | {r['grown_by']} ({r['rows_added']}) | {cells(r)} | {r['continue_s']} | {r['cached_s']} | "
        f"{r['refit_s']} |" for t, r in rows.items()] + [
        f"| **mean** | | {cells(mean)} | {mean['continue_s']:.2f} | {mean['cached_s']:.2f} | "
        f"{mean['refit_s']:.2f} |"]


def main(argv: list[str] | None = None) -> None:
    from metacompress.learners.meta import History, make_predictor
    from metacompress.learners.meta.reptile import FLYWHEEL_EPOCHS, FLYWHEEL_META_LR, ReptilePredictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, metavar="TASK")
    ap.add_argument("--meta-epochs", type=int, default=ReptilePredictor().meta_epochs,
                    help="meta-epochs of the shipped and the refit predictor (the default's; fewer for a smoke run)")
    ap.add_argument("--kinds", nargs="+", default=["reptile", "gbm"], choices=["reptile", "gbm"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = load_runs(RUNS)
    shipped = History.shipped()
    rows: dict[str, dict[str, Any]] = {}
    gbm: dict[str, dict[str, Any]] = {}
    fresh = lambda: make_predictor("reptile", random_state=0, meta_epochs=args.meta_epochs)  # noqa: E731
    for held in args.tasks:
        grown_by = TASKS[(TASKS.index(held) + 1) % len(TASKS)]
        sets = real_trial_sets(held, runs)
        if "gbm" in args.kinds:
            gbm[held] = gbm_rows(held, grown_by, shipped, sets)
            print(held, "gbm", gbm[held], flush=True)
        if "reptile" not in args.kinds:
            continue
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
    from metacompress.learners.meta.predictors import FLYWHEEL_TREES

    path = args.out / "flywheel.json"
    out = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "reptile" in args.kinds:
        mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("shipped", "continued", "refit",
                                                                            "continue_s", "refit_s")}
        out |= {"per_task": rows, "mean": mean, "flywheel_epochs": FLYWHEEL_EPOCHS,
                "flywheel_meta_lr": FLYWHEEL_META_LR, "seed": 0, "threads": 1, "meta_epochs": args.meta_epochs,
                "machine": machine()}
    if "gbm" in args.kinds:
        gmean = {w: {q: float(np.mean([r[w][q] for r in gbm.values()])) for q in GBM_QUERIES}
                 for w in ("shipped", "continued", "refit")}
        gmean |= {k: float(np.mean([r[k] for r in gbm.values()])) for k in ("continue_s", "cached_s", "refit_s")}
        out["gbm"] = {"per_task": gbm, "mean": gmean, "flywheel_trees": FLYWHEEL_TREES, "seed": 0, "threads": 1,
                      "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    rows, mean = out.get("per_task", {}), out.get("mean", {})
    lines = ["# The flywheel: updating the pretrained predictors when the history grows", "",
             "Held-out task T; the history grows by another task's rows. Spearman of predicted vs real retention "
             "on T's real trials (zero-shot). One torch thread, seed 0 (`experiments/bench_flywheel.py`).", ""]
    if "gbm" in out:
        lines += gbm_lines(out["gbm"]) + [""]
    if rows:
        lines += ["## The Reptile predictor", "",
                  f"Continued = the shipped predictor meta-trained {out['flywheel_epochs']} more epochs (initial step "
                  f"{out['flywheel_meta_lr']}) on the grown history, what a search does; refit = from scratch "
                  f"({out['meta_epochs']} epochs).{_ran_on(out)}", "",
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
