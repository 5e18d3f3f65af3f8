"""Benchmark of where a search runs: Ray Tune dispatch overhead, MLflow cost per trial, local parallel speedup.

Every number is measured against the trials' own compute (``timing.train_s + timing.eval_s`` in each trial's user
attributes), so the result says what the backend adds, not how fast the model trains:

* ``ray_overhead_s`` — Ray Tune backend, one trial at a time (``max_concurrent: 1``, ``reuse_actors``, ASHA off),
  on a Ray started beforehand: ``(wall of run_ray - sum of trial compute) / trials``. Everything the backend adds is
  in it (Tuner set-up, putting the objective into the object store, starting the worker actor, ask/tell, the
  artefact, the result round trips). ``ray_steady_dispatch_s`` is the same per trial after the first one.
* ``mlflow_ms_per_trial`` — ``Tracker.log_trial`` (one nested child run: params, metrics, per-epoch history,
  tags) on a fresh sqlite store, mean over the trials of a run.
* ``parallel_speedup_2_workers`` — trials per hour of the local backend with ``parallel.n_jobs: 2`` (worker
  processes forked on Linux, torch 1 thread each) over ``n_jobs: 1``, same task, same budget, walls measured around
  ``run_local`` (the second worker's start-up is included).

Every run of repeat ``r`` evaluates the same ``--trials`` points (drawn by a ``RandomSampler(seed=r)`` and
enqueued), so the backends are compared on identical work.

Each number is the median over ``--repeats`` runs; run ``r`` uses seed ``r`` for the sampler and training.
Run ``python experiments/bench_backends.py`` (about 4 minutes on 2 idle cores); it writes
``experiments/results/backends.json`` and ``backends.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from metacompress.search.config import load_config  # noqa: E402
from metacompress.search.runner import prepare, run_local  # noqa: E402
from metacompress.search.study import counted_trials  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EPOCHS = 2  # fixed, so every trial costs about the same


def _config(base: Path, tmp: Path, name: str, seed: int, n: int, **extra: Any) -> Any:
    overrides = {"storage": f"sqlite:///{tmp}/{name}.db", "study_name": name, "out": str(tmp / name),
                 "tracking_uri": "none", "seed": seed, "n_trials": n, "space.epochs": EPOCHS,
                 "train.latency_repeats": 5, "train.num_threads": 1, "ray.storage_path": str(tmp / "ray"),
                 "ray.asha": False, "ray.max_concurrent": 1, **extra}
    return load_config(base, overrides)


def _points(p: Any, seed: int, n: int) -> None:
    """Enqueue the same ``n`` random points (seeded) in every study, so every backend runs the same trials."""
    import optuna

    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        p.study.enqueue_trial(draw.ask(p.distributions).params)


def _compute_s(trials: list) -> list[float]:
    return [t.user_attrs["timing"]["train_s"] + t.user_attrs["timing"]["eval_s"]
            for t in trials if t.user_attrs.get("timing")]


def bench_ray(base: Path, tmp: Path, seed: int, n: int) -> dict[str, float]:
    """One sequential Ray run on an already started Ray."""
    from metacompress.search.ray_backend import run_ray

    p = prepare(_config(base, tmp, f"ray-{seed}", seed, n, backend="ray"))
    _points(p, seed, n)
    t0 = time.perf_counter()
    run_ray(p)
    wall = time.perf_counter() - t0
    trials = sorted(counted_trials(p.study), key=lambda t: t.datetime_start)
    compute = _compute_s(trials)
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() - c for t, c in zip(trials, compute)]
    return {"wall_s": wall, "compute_s": sum(compute), "n": len(trials), "overhead_s": (wall - sum(compute)) / n,
            "first_trial_overhead_s": per_trial[0], "steady_dispatch_s": statistics.median(per_trial[1:])}


def bench_local(base: Path, tmp: Path, seed: int, n: int, n_jobs: int) -> dict[str, float]:
    """One local run with ``n_jobs`` worker processes; trials per hour from the wall around ``run_local``."""
    p = prepare(_config(base, tmp, f"local{n_jobs}-{seed}", seed, n, **{"parallel.n_jobs": n_jobs}))
    _points(p, seed, n)
    t0 = time.perf_counter()
    run_local(p)
    wall = time.perf_counter() - t0
    trials = counted_trials(p.study)
    compute = sum(_compute_s(trials))
    distinct = len({json.dumps(t.params, sort_keys=True) for t in trials})
    return {"wall_s": wall, "compute_s": compute, "n": len(trials), "trials_per_hour": 3600 * len(trials) / wall,
            "overhead_s": (wall * n_jobs - compute) / len(trials), "distinct_params": distinct}


def bench_mlflow(tmp: Path, seed: int, n: int) -> dict[str, float]:
    """``Tracker.log_trial`` for ``n`` realistic trials on a fresh sqlite store."""
    import random

    from metacompress.search.tracking import Tracker

    rng = random.Random(seed)
    tracker = Tracker(f"sqlite:///{tmp}/mlflow-{seed}.db", f"bench-{seed}")
    tracker.check_reachable()
    tracker.start_parent(f"bench-{seed}", tags={"task": "digits-cnn", "backend": "optuna"}, params={"n_trials": n})
    layers = ["conv1", "block.conv1", "block.conv2", "conv2", "fc", "head"]
    times = []
    for i in range(n):
        params = {"prune": {k: rng.random() for k in layers}, "bits": {k: rng.choice([2, 4, 8]) for k in layers},
                  "prune_method": "structured", "kd_lambda": rng.random(), "temperature": 4.0, "epochs": 2,
                  "lr": 1e-3}
        metrics = {"accuracy": rng.random(), "size_bytes": rng.randint(1000, 9000), "latency_ms": rng.random(),
                   "compression_ratio": 10 * rng.random(), "bitops": 1e6 * rng.random()}
        history = [{"epoch": e, "loss": rng.random(), "val_accuracy": rng.random()} for e in (1, 2)]
        t0 = time.perf_counter()
        tracker.log_trial(i, params, metrics, history, "COMPLETE", None)
        times.append(time.perf_counter() - t0)
    tracker.finish("FINISHED")
    return {"mean_ms": 1000 * statistics.fmean(times), "median_ms": 1000 * statistics.median(times),
            "first_ms": 1000 * times[0]}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def markdown(r: dict[str, Any]) -> str:
    """The short table of ``backends.md``."""
    s, runs = r["setup"], r["runs"]

    def spread(name: str, key: str, scale: float = 1.0) -> str:
        vals = sorted(scale * x[key] for x in runs[name])
        return f"{vals[0]:.3g}–{vals[-1]:.3g}"

    load = ", ".join(f"{x:.2f}" for x in s["load_avg_before"])
    load_after = ", ".join(f"{x:.2f}" for x in s["load_avg_after"])
    return "\n".join([
        "# Backends: Ray dispatch, MLflow cost, local parallel speedup",
        "",
        f"`python experiments/bench_backends.py` — {s['config']}, {s['trials']} trials of {s['epochs']} epochs per "
        f"run (the same seeded points in every backend), median of {s['repeats']} repeats (seeds {s['seeds']}); "
        f"{s['cpus']} CPUs, {s['machine']}, Python {s['python']}. Load average (1/5/15 min) before: {load}; "
        f"after: {load_after} (the cores are shared, so the spread matters).",
        "",
        "| measure | median | spread | target |",
        "|---|---|---|---|",
        f"| Ray overhead per trial (s), sequential, actor start amortized | {r['ray_overhead_s']:.3f} | "
        f"{spread('ray', 'overhead_s')} | ≤ 0.5 |",
        f"| Ray steady dispatch per trial after the first (s) | {r['ray_steady_dispatch_s']:.3f} | "
        f"{spread('ray', 'steady_dispatch_s')} | |",
        f"| Ray first trial (actor start, objective fetch) (s) | {r['ray_first_trial_overhead_s']:.2f} | "
        f"{spread('ray', 'first_trial_overhead_s')} | |",
        f"| local backend overhead per trial (s), 1 worker | {r['local_overhead_s']:.3f} | "
        f"{spread('local_1', 'overhead_s')} | |",
        f"| MLflow `Tracker.log_trial` on sqlite (ms/trial) | {r['mlflow_ms_per_trial']:.1f} | "
        f"{spread('mlflow', 'mean_ms')} | ≤ 30 |",
        f"| trials/hour, 2 local workers ÷ 1 | {r['parallel_speedup_2_workers']:.2f}× | "
        f"{min(r['speedups']):.2f}–{max(r['speedups']):.2f} | ≥ 1.7 |",
        "",
        f"Trial compute (train + eval) is {r['trial_compute_s']:.2f} s per trial (1 worker). Ray was started once "
        f"before the Ray runs ({r['ray_start_s']:.1f} s, not in the per-trial numbers). Overheads are "
        "`(wall - sum of the trials' own train_s + eval_s) / trials`; both backends pay the study writes and the "
        "artefact export in theirs.",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=HERE / "configs" / "digits-cnn.yaml")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mlflow-trials", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp_name:
        tmp = Path(tmp_name)
        mlf = [bench_mlflow(tmp, r, args.mlflow_trials) for r in range(args.repeats)]
        local1, local2 = [], []
        for r in range(args.repeats):
            local1.append(bench_local(args.config, tmp, r, args.trials, 1))
            local2.append(bench_local(args.config, tmp, r, args.trials, 2))
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            rays = [bench_ray(args.config, tmp, r, args.trials) for r in range(args.repeats)]
        finally:
            ray.shutdown()
    speedups = [b["trials_per_hour"] / a["trials_per_hour"] for a, b in zip(local1, local2)]
    result = {
        "ray_overhead_s": _median(rays, "overhead_s"),
        "mlflow_ms_per_trial": _median(mlf, "mean_ms"),
        "parallel_speedup_2_workers": float(statistics.median(speedups)),
        "ray_steady_dispatch_s": _median(rays, "steady_dispatch_s"),
        "ray_first_trial_overhead_s": _median(rays, "first_trial_overhead_s"),
        "ray_start_s": ray_start,
        "local_overhead_s": _median(local1, "overhead_s"),
        "trial_compute_s": statistics.median(r["compute_s"] / r["n"] for r in local1),
        "speedups": speedups,
        "runs": {"ray": rays, "local_1": local1, "local_2": local2, "mlflow": mlf},
        "setup": {"config": str(args.config.relative_to(HERE.parent)) if args.config.is_absolute() else
                  str(args.config), "trials": args.trials, "repeats": args.repeats, "seeds": list(range(args.repeats)),
                  "epochs": EPOCHS, "latency_repeats": 5, "mlflow_trials": args.mlflow_trials,
                  "cpus": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
                  "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(result, indent=2))
    (args.out / "backends.md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=2))


if __name__ == "__main__":
    main()
