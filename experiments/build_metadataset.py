"""Build the shipped meta-dataset and the pretrained warm-start predictors.

Runs ``--n`` space-filling (scrambled Sobol) policies on every built-in task (few-shot ones included unless
``--skip-fewshot``), each compressed, distilled and evaluated exactly as a search trial
(:class:`metacompress.search.objective.Objective`), and writes to ``learners/meta/data/``:

* ``metadataset.csv.gz`` — one row per finished trial: task meta-features ⊕ policy encoding ⊕ outcomes;
* ``metadataset_tasks.json`` — per task: meta-features, layers, sensitivity probes, teacher metrics (the same
  content a search logs as ``meta.json``);
* ``reptile.safetensors`` + ``reptile.json`` and ``gbm.npz`` + ``gbm.json`` — the predictors (weights, trees
  and isotonic maps as numeric arrays, no pickle);
* ``predictor.json`` — the default predictor and why (:data:`DEFAULT_KIND`: the one whose warm starts win the
  warm-start benchmark), the leave-one-task-out scores of both (mean Spearman of predicted vs. real retention on
  each held-out zoo task) and the build's cost.

``--synthetic`` adds the synthetic meta-training tasks (:data:`metacompress.learners.tasks.SYNTHETIC_TASKS`:
64 ``make_classification`` problems with their own MLP teachers, and 13 few-shot variants); ``--append`` keeps
the CSV's other tasks. The shipped CSV holds the zoo's 8 tasks (48 policies each, plus the real trials of the
benchmark's cold runs, ``--add-runs``) and the 77 synthetic ones (96 policies each:
``--synthetic --append --n 96 --tasks <the synthetic names>``, 352 s of trials).

Seeded and reproducible on a given machine (CPU, one thread per process). Cost with the defaults (48 policies × 8
tasks, 1–3 fine-tuning epochs each): about 10–15 minutes on 2 CPU cores; ``--train-only`` refits the predictors
from an existing CSV in about two minutes (``--reencode`` first recomputes sizes, encodings and measured proxies of
its rows from their policies, after a change of the size format, the encoding or the proxy, without re-running any
trial; about a minute more; ``--add-proxy`` measures only the missing proxies and keeps every other column;
``--kinds gbm`` evaluates and refits the GBM alone, in 20 s, e.g. after a change of its defaults, keeping Reptile's
weights and scores).

Usage::

    python experiments/build_metadataset.py [--n 48] [--seed 0] [--tasks digits-mlp wine-mlp] [--train-only]
    python experiments/build_metadataset.py --train-only --kinds gbm
    python experiments/build_metadataset.py --synthetic --append --n 96 --tasks synth-01-mlp synth-05-5w10s
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.stats import spearmanr

from metacompress.learners import BUILTIN_TASKS, describe_layers, load_task
from metacompress.learners.tasks import SYNTHETIC_TASKS
from metacompress.learners.meta import (
    FEATURE_NAMES,
    PROXY_NAME,
    TUNED_PROXY_NAME,
    History,
    ProxyProbe,
    SizeModel,
    encode_policy,
    layer_sensitivity,
    load_predictor,
    make_predictor,
    make_row,
    save_predictor,
    task_meta_features,
)
from metacompress.learners.meta.history import SHIPPED_CSV
from metacompress.search.objective import Objective, TrialFailed, teacher_metrics
from metacompress.spaces import Categorical, CompressionPolicy, CompressionSpace, Float, Int, Ordinal

DATA = Path(__file__).resolve().parents[1] / "learners" / "meta" / "data"
CSV = DATA / SHIPPED_CSV
console = Console()


def build_space(layers: list) -> CompressionSpace:
    """The default search space of a config, with both pruning methods so the data covers them."""
    return CompressionSpace(layers, prune=Float(0.0, 0.9), bits=Ordinal((2, 3, 4, 6, 8)),
                            prune_method=Categorical(("unstructured", "structured")), kd_lambda=Float(0.0, 1.0),
                            temperature=Float(1.0, 8.0), epochs=Int(1, 3), lr=Float(1e-4, 1e-2, log=True))


def task_meta(name: str, seed: int) -> tuple[Any, dict[str, Any], SizeModel]:
    """Load a task and compute what a search logs as ``meta.json``."""
    task = load_task(name, seed=seed)
    layers = describe_layers(task.teacher, task.example_input(2))
    sensitivity = layer_sensitivity(task, layers, seed=seed)
    features = task_meta_features(task, seed=seed, layers=layers, sensitivity=sensitivity)
    reference = teacher_metrics(task, latency_repeats=3)
    meta = {"schema": 1, "task": name, "meta_features": features, "layers": [i.to_dict() for i in layers],
            "sensitivity": sensitivity, "teacher": reference}
    return task, meta, SizeModel(task.teacher, task.example_input(2))


def run_task(name: str, n: int, seed: int, progress: Progress) -> tuple[list[dict], dict, dict[str, int]]:
    """Run ``n`` space-filling trials of one task; returns rows, its meta and counters."""
    task, meta, size_model = task_meta(name, seed)
    layers = [*describe_layers(task.teacher, task.example_input(2))]
    space = build_space(layers)
    objective = Objective(task, space, meta["teacher"], device="cpu", latency_repeats=3, seed=seed)
    counts = {"failed": 0, "size_mismatch": 0}
    rows = []
    bar = progress.add_task(name, total=n)
    for params in space.space_filling(n, seed):
        try:
            out = objective(params)
        except TrialFailed:
            counts["failed"] += 1
            progress.advance(bar)
            continue
        m = out.metrics
        counts["size_mismatch"] += int(size_model.policy_bytes(out.policy) != int(m["size_bytes"]))
        enc = encode_policy(out.policy, layers, meta["sensitivity"], compression_ratio=m["compression_ratio"])
        rows.append(make_row(name, "build_metadataset", meta["meta_features"], enc, m,
                             meta["teacher"]["accuracy"], out.policy))
        progress.advance(bar)
    return rows, meta, counts


def reencode(history: History, seed: int) -> History:
    """Recompute sizes, encodings and measured proxies of existing rows from their policies (after a change of
    the size format, of the encoding or of the proxy); accuracies are kept, so no trial is re-run."""
    rows = []
    frame = history.frame
    for name in history.tasks:
        task, meta, size_model = task_meta(name, seed)
        probe = ProxyProbe(task)
        layers = describe_layers(task.teacher, task.example_input(2))
        for rec in frame[frame["task"] == name].to_dict("records"):
            policy = CompressionPolicy.from_dict(json.loads(rec["policy"]), [i.name for i in layers])
            size = size_model.policy_bytes(policy)
            metrics = {"accuracy": rec["accuracy"], "size_bytes": float(size), "latency_ms": rec["latency_ms"],
                       "compression_ratio": size_model.teacher_bytes / size, PROXY_NAME: probe(policy)}
            enc = encode_policy(policy, layers, meta["sensitivity"], compression_ratio=metrics["compression_ratio"])
            rows.append(make_row(name, rec["study"], meta["meta_features"], enc, metrics,
                                 rec["teacher_accuracy"], policy))
    return History.from_rows(rows)


def add_proxy(history: History) -> History:
    """Measure the proxy of the rows that lack it, from their policies; every other column is kept (the teacher
    a row's meta-features came from may differ slightly from this machine's, so they are not recomputed)."""
    frame = history.frame
    missing = frame[PROXY_NAME].isna() & (frame["policy"] != "")
    for name in sorted(frame.loc[missing, "task"].unique()):
        task = load_task(name)
        probe, names = ProxyProbe(task), [i.name for i in describe_layers(task.teacher, task.example_input(2))]
        rows = missing & (frame["task"] == name)
        frame.loc[rows, PROXY_NAME] = [probe(CompressionPolicy.from_dict(json.loads(p), names))
                                       for p in frame.loc[rows, "policy"]]
    return History(frame)


def add_tuned(history: History, seed: int) -> History:
    """Measure the tuned proxy (:meth:`ProxyProbe.tuned`) of the rows that lack it, from their policies, as the
    trial behind each row ran it: a build row with the build's seed and the search default batch size of 64, a
    benchmark row (study ``bench:<method>:<seed>``) with its run's seed and the benchmark config's batch size.
    Every other column is kept."""
    from bench_warmstart import _setup  # noqa: PLC0415 - the benchmark's configs, same folder

    frame = history.frame
    missing = frame[TUNED_PROXY_NAME].isna() & (frame["policy"] != "")
    tasks = sorted(frame.loc[missing, "task"].unique())
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("tuned proxy", total=int(missing.sum()))
        for name in tasks:
            task = load_task(name)
            probe, names = ProxyProbe(task), [i.name for i in describe_layers(task.teacher, task.example_input(2))]
            rows = frame.index[missing & (frame["task"] == name)]
            values = []
            for study, text in zip(frame.loc[rows, "study"], frame.loc[rows, "policy"]):
                bench = str(study).startswith("bench:")
                run_seed = int(str(study).rsplit(":", 1)[1]) if bench else seed
                batch = _setup(name)["cfg"].train.batch_size if bench else 64
                policy = CompressionPolicy.from_dict(json.loads(text), names)
                values.append(probe.tuned(policy, seed=run_seed, batch_size=batch))
                progress.advance(bar)
            frame.loc[rows, TUNED_PROXY_NAME] = values
    return History(frame)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rho = spearmanr(a, b).statistic if np.std(a) > 0 and np.std(b) > 0 else 0.0
    return float(np.nan_to_num(rho))


def evaluate(history: History, seed: int, shots: int = 8, kinds: tuple[str, ...] = ("gbm", "reptile")
             ) -> dict[str, dict[str, float]]:
    """Leave-one-task-out: Spearman and MAE on the held-out task, zero-shot and after ``shots`` trials.

    The held-out tasks are the zoo's (the synthetic tasks are training material, always in the fit)."""
    X, y, g = history.X(), history.y(), history.groups()
    rng = np.random.default_rng(seed)
    scores: dict[str, dict[str, list[float]]] = {}
    held_out = [t for t in history.tasks if t not in SYNTHETIC_TASKS]
    for held in held_out:
        test = g == held
        support = rng.choice(np.flatnonzero(test), min(shots, int(test.sum()) - 2), replace=False)
        query = np.setdiff1d(np.flatnonzero(test), support)
        for kind in kinds:
            model = make_predictor(kind, random_state=seed).fit(X[~test], y[~test], g[~test])
            if hasattr(model, "focus"):  # as a warm start focuses it on the new task
                model = model.focus(X[test][0, : len(FEATURE_NAMES)])
            adapted = model.adapt(X[support], y[support])
            for label, m in ((kind, model), (f"{kind}+{shots}shot", adapted)):
                pred = m.predict(X[query])
                s = scores.setdefault(label, {"spearman": [], "mae": []})
                s["spearman"].append(_spearman(pred, y[query]))
                s["mae"].append(float(np.mean(np.abs(pred - y[query]))))
    return {k: {m: float(np.mean(v)) for m, v in d.items()} | {"per_task_spearman": dict(zip(held_out,
            d["spearman"]))} for k, d in scores.items()}


#: The default predictor, and why: chosen by what it is for, the warm start on held-out tasks.
DEFAULT_KIND = "gbm"
SELECTION = ("warm-start benchmark, leave-one-task-out (experiments/results/warmstart.md): warm starts from the GBM "
             "reach cold TPE's hypervolume in far fewer trials than from Reptile (which ranked a held-out task's "
             "trials better before the tuned proxy joined the inputs; see the scores below)")


def load_seconds(path: Path, repeats: int = 5) -> float:
    """Median seconds of ``load_predictor(path)`` over ``repeats`` loads: what a warm start pays for the pretrained
    predictor (``predictor_s`` in ``predictor.json``, next to the seconds a fit on the meta-dataset takes)."""
    times = []
    for _ in range(repeats):
        a = time.perf_counter()
        load_predictor(path)
        times.append(time.perf_counter() - a)
    return float(np.median(times))


def train_and_save(history: History, seed: int, extra: dict[str, Any], kinds: tuple[str, ...] = ("gbm", "reptile")
                   ) -> dict[str, Any]:
    """Evaluate the predictors of ``kinds`` held-out, fit them on everything, save them and the choice (the other
    kind's files and scores stay as the last build left them)."""
    t0 = time.perf_counter()
    kept = {} if set(kinds) == {"gbm", "reptile"} else {
        k: v for k, v in json.loads((DATA / "predictor.json").read_text(encoding="utf-8"))["scores"].items()
        if k.split("+")[0] not in kinds}
    scores = {**kept, **evaluate(history, seed, kinds=kinds)}
    best = max(("gbm", "reptile"), key=lambda k: scores[k]["spearman"])
    costs = {k: v for k, v in extra.pop("predictor_s", {}).items() if k not in kinds}
    for kind in kinds:
        a = time.perf_counter()
        model = make_predictor(kind, random_state=seed).fit(history.X(), history.y(), history.groups())
        fit_s = time.perf_counter() - a
        save_predictor(model, DATA / f"{kind}.json")
        costs[kind] = {"fit_s": round(fit_s, 2), "load_s": round(load_seconds(DATA / f"{kind}.json"), 3)}
    for path in DATA.iterdir():
        path.chmod(0o644)  # package data: world-readable
    info = {"default": DEFAULT_KIND, "selection": SELECTION, "best_spearman": best, "scores": scores,
            "n_rows": len(history), "tasks": history.tasks, "seed": seed,
            "train_s": round(time.perf_counter() - t0, 1), "predictor_s": costs, **extra}
    (DATA / "predictor.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def rows_from_runs(path: Path, methods: list[str]) -> list[dict[str, Any]]:
    """History rows from the real trials of ``experiments/bench_warmstart.py`` runs (its JSONL) of ``methods``.

    Every finished search joins the history (the flywheel); these are the searches the benchmark ran. Each row
    is tagged ``study = "bench:<method>:<seed>"``; the task's meta-features and probes are the meta-dataset's. A
    trial that did not record its proxies (runs before they were recorded) has them measured here.
    """
    from bench_warmstart import _setup, load_runs  # noqa: PLC0415 - the benchmark's spaces, same folder

    metas = json.loads((DATA / "metadataset_tasks.json").read_text(encoding="utf-8"))
    rows = []
    probes: dict[str, ProxyProbe] = {}
    for r in load_runs(path):
        if r["method"] not in methods or r["task"] not in metas:
            continue
        setup, meta = _setup(r["task"]), metas[r["task"]]
        space = setup["space"]
        for t in r["trials"]:
            if t["metrics"] is None:
                continue
            policy = space.decode(t["params"])
            enc = encode_policy(policy, space.layers, meta["sensitivity"],
                                compression_ratio=t["metrics"]["compression_ratio"])
            metrics = dict(t["metrics"])
            if r["task"] not in probes and not {PROXY_NAME, TUNED_PROXY_NAME} <= set(metrics):
                probes[r["task"]] = ProxyProbe(setup["task"])
            if PROXY_NAME not in metrics:
                metrics[PROXY_NAME] = probes[r["task"]](policy)
            if TUNED_PROXY_NAME not in metrics:
                metrics[TUNED_PROXY_NAME] = probes[r["task"]].tuned(policy, seed=r["seed"],
                                                                    batch_size=setup["cfg"].train.batch_size)
            rows.append(make_row(r["task"], f"bench:{r['method']}:{r['seed']}", meta["meta_features"], enc,
                                 metrics, r["teacher"]["accuracy"], policy))
    return rows


def previous_build() -> dict[str, Any]:
    """The build record (cost, counts, appended tasks) of the shipped ``predictor.json``; empty without one."""
    path = DATA / "predictor.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    return {k: old[k] for k in ("build_s", "n_per_task", "counts", "threads", "machine", "appended", "bench_runs",
                                "add_tuned_s", "predictor_s") if k in old}


def ship(history: History) -> History:
    """Write ``history`` as the shipped CSV and return it as read back: the predictors learn the rows as they ship
    (the CSV keeps 10 significant digits), so the shipped ``fit_digest`` is the CSV's."""
    history.to_csv(CSV)
    return History.from_csv(CSV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="space-filling policies per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="default: every built-in task (and, with --synthetic, every synthetic one)")
    parser.add_argument("--skip-fewshot", action="store_true")
    parser.add_argument("--synthetic", action="store_true",
                        help="also run the synthetic meta-training tasks (learners.tasks.SYNTHETIC_TASKS)")
    parser.add_argument("--append", action="store_true",
                        help="keep the CSV's rows of other tasks and add these tasks' (replacing their old rows)")
    parser.add_argument("--train-only", action="store_true", help="refit the predictors from the existing CSV")
    parser.add_argument("--reencode", action="store_true",
                        help="with --train-only: recompute sizes, encodings and proxies of the CSV's rows first")
    parser.add_argument("--add-proxy", action="store_true",
                        help="with --train-only: measure the proxy of the CSV's rows that lack it")
    parser.add_argument("--add-tuned", action="store_true",
                        help="with --train-only: measure the tuned proxy of the CSV's rows that lack it")
    parser.add_argument("--add-runs", type=Path, default=None, metavar="JSONL",
                        help="with --train-only: replace the rows from benchmark runs with this JSONL's real "
                             "trials of --run-methods (experiments/results/warmstart_runs.jsonl)")
    parser.add_argument("--run-methods", nargs="*", default=["cold_tpe"])
    parser.add_argument("--kinds", nargs="+", default=["gbm", "reptile"], choices=["gbm", "reptile"],
                        help="with --train-only: evaluate and refit only these predictors (e.g. after a change of "
                             "the GBM's defaults; the other keeps its file and scores)")
    args = parser.parse_args()
    if set(args.kinds) != {"gbm", "reptile"} and not args.train_only:
        parser.error("--kinds: only with --train-only (a build evaluates both predictors)")
    torch.set_num_threads(1)
    DATA.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if args.train_only:  # keep the cost of the build that made the CSV
        extra = previous_build()
    if not args.train_only:
        zoo = {**BUILTIN_TASKS, **SYNTHETIC_TASKS} if args.synthetic else BUILTIN_TASKS
        names = args.tasks or [n for n, s in zoo.items() if not (args.skip_fewshot and s.n_way)]
        unknown = sorted(set(names) - set(BUILTIN_TASKS) - set(SYNTHETIC_TASKS))
        if unknown:
            parser.error(f"--tasks: unknown task(s) {unknown}; allowed: built-in and synthetic task names")
        t0, rows, metas, counts = time.perf_counter(), [], {}, {}
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console) as progress:
            for name in names:
                task_rows, metas[name], counts[name] = run_task(name, args.n, args.seed, progress)
                rows += task_rows
        new, build_s = History.from_rows(rows), round(time.perf_counter() - t0, 1)
        if args.append:  # the other tasks' rows, metas and build record stay
            existing = History.from_csv(CSV)
            new = existing.subset([t for t in existing.tasks if t not in names]).concat(new)
            metas = {**json.loads((DATA / "metadataset_tasks.json").read_text(encoding="utf-8")), **metas}
            extra = previous_build()
            extra["counts"] = {**extra.get("counts", {}), **counts}
            extra["appended"] = [*extra.get("appended", []), {"tasks": names, "n_per_task": args.n,
                                                              "build_s": build_s}]
        else:
            extra = {"build_s": build_s, "n_per_task": args.n, "counts": counts, "threads": 1,
                     "machine": f"{torch.get_num_threads()} torch thread(s), CPU"}
        new.to_csv(CSV)
        (DATA / "metadataset_tasks.json").write_text(json.dumps(metas, indent=1), encoding="utf-8")
        console.print(f"{len(rows)} rows in {build_s} s; failures/size mismatches: {counts}")
    history = History.from_csv(CSV)
    if args.train_only and args.reencode:
        history = ship(reencode(history, args.seed))
    if args.train_only and args.add_runs:  # first: its rows measure their own proxies
        frame = history.frame
        kept = History(frame[~frame["study"].astype(str).str.startswith("bench:")].reset_index(drop=True))
        history = ship(kept.concat(History.from_rows(rows_from_runs(args.add_runs, args.run_methods))))
        extra["bench_runs"] = {"file": str(args.add_runs.name), "methods": args.run_methods,
                               "rows": len(history) - len(kept)}
    if args.train_only and args.add_proxy:
        history = ship(add_proxy(history))
    if args.train_only and args.add_tuned:
        t0 = time.perf_counter()
        history = ship(add_tuned(history, args.seed))
        extra["add_tuned_s"] = round(time.perf_counter() - t0, 1)
    info = train_and_save(history, args.seed, extra, tuple(args.kinds))
    for kind, s in info["scores"].items():
        console.print(f"{kind:>14}: held-out Spearman {s['spearman']:.3f}, MAE {s['mae']:.3f}")
    console.print(f"default predictor: {info['default']} ({history.explain()})")


if __name__ == "__main__":
    main()
