"""What a CUDA device buys a search: teacher training and whole trials, GPU against CPU, on the zoo tasks.

Run it on a machine with a GPU (``python experiments/bench_gpu.py``; about 4 min on one H200 with 16 cores); on
a machine without one it measures the CPU settings alone. For each task (its ``experiments/configs/<task>.yaml``
space and training settings):

* **teacher**: a fresh teacher of the task's recipe (``TeacherSpec``, seed 0) trained by ``train_teacher`` on
  each device setting: wall seconds and validation accuracy.
* **trial**: ``--policies`` space-filling policies of the task's space (``space_filling(n, seed=--seed)``), each
  run as a whole search trial (``Objective``: compress, KD fine-tuning on the device, then evaluation, whose
  latency is timed on the CPU in every setting) ``--repeats`` times per setting. ``train_s`` (compress +
  fine-tune) and ``eval_s`` are the medians over repeats, then over policies. Each setting first runs one
  untimed trial (CUDA context, cuDNN autotuning, first-call costs).
* **wider models** (``--wide N``): ``digits-cnn-xN``, the digits-cnn recipe with every width N times larger
  (``width 32N``, ``hidden 128N``: 2.7 M parameters at N = 4), searched with digits-cnn's config: where the zoo's
  models are launch-bound on a GPU, this shows when the GPU starts to pay.
* **settings**: ``cuda``; ``cpu1``, the CPU with one torch thread (a search worker's default,
  ``train.num_threads: 1``, so that ``n_jobs`` workers share the cores); ``cpuN``, the CPU with every core.
* **agreement**: the accuracy of the same policy (same seed, same batch order) on CUDA and on the CPU: the
  median and largest |Δ| in percentage points. The kernels differ, the results should not.
* **throughput** (trials per hour, derived, stated as such): ``3600 / trial_s`` for one CUDA worker, and
  ``cores x 3600 / trial_s(cpu1)`` for one single-threaded worker per core (an upper bound: it assumes perfect
  scaling across cores).
* **searches** (``--searches cuda:1 cuda:4 cpu:16``, measured): a real search of ``--search-trials`` trials
  (``run_search``: Optuna TPE, no warm start, no MLflow, sqlite storage, ``--latency-repeats``) with that device
  and that many local worker processes, one torch thread each (spawned once CUDA has started in the process,
  as here on a GPU machine; forked otherwise); trials per hour over the whole call, worker start included.

Writes ``gpu.json`` and ``gpu.md`` into ``--out`` (``experiments/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from metacompress.learners import load_task
from metacompress.learners.tasks import BUILTIN_TASKS, Task, TaskSpec, _build
from metacompress.learners.teachers import train_teacher
from metacompress.search.config import load_config
from metacompress.search.objective import Objective, teacher_metrics
from metacompress.search.runner import build_space, run_search

from benchinfo import machine  # noqa: E402 (experiments/ is the script's folder)

HERE = Path(__file__).resolve().parent
TASKS = ("digits-cnn", "mnist1d-cnn", "digits-mlp", "mnist1d-mlp")


def settings(devices: list[str]) -> dict[str, tuple[str, int]]:
    """Setting name -> (device, torch threads)."""
    out: dict[str, tuple[str, int]] = {}
    if "cuda" in devices and torch.cuda.is_available():
        out["cuda"] = ("cuda", 1)
    if "cpu" in devices:
        out["cpu1"] = ("cpu", 1)
        out[f"cpu{os.cpu_count()}"] = ("cpu", os.cpu_count() or 1)
    return out


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def task_spec(name: str) -> TaskSpec:
    """A built-in regular task, or ``digits-cnn-xN``: digits-cnn with every width N times larger."""
    if name.startswith("digits-cnn-x"):
        n = int(name.removeprefix("digits-cnn-x"))
        base = BUILTIN_TASKS["digits-cnn"]
        return dataclasses.replace(base, name=name, arch_kwargs={"width": 32 * n, "hidden": 128 * n},
                                   description=f"digits-cnn, widths x{n}")
    return BUILTIN_TASKS[name]


def wide_task(n: int = 4, seed: int = 0, cache_dir: str | None = None) -> Task:
    """``digits-cnn-xN`` as a task factory (``task: {factory: "bench_gpu:wide_task"}``) for the searches."""
    return _build(task_spec(f"digits-cnn-x{n}"), seed, cache_dir, False)


def bench_search(name: str, device: str, n_jobs: int, n_trials: int, seed: int,
                 latency_repeats: int | None, cache_dir: str | None = None) -> dict[str, float]:
    """Wall time of a real search of ``n_trials`` with ``n_jobs`` local workers on ``device``."""
    import yaml

    base = yaml.safe_load((HERE / "configs" / f"{'digits-cnn' if name not in BUILTIN_TASKS else name}.yaml").read_text())
    task = name if name in BUILTIN_TASKS else {"factory": "bench_gpu:wide_task", "kwargs": {
        "n": int(name.removeprefix("digits-cnn-x")), "cache_dir": cache_dir}}  # the teacher the trials were timed on
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))  # spawned
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {**base, "task": task, "n_trials": n_trials, "seed": seed, "warm_start": {"mode": "off"},
               "storage": f"sqlite:///{tmp}/study.db", "tracking_uri": "none", "out": f"{tmp}/out",
               "parallel": {"n_jobs": n_jobs},
               "train": {**base["train"], "device": device, "num_threads": 1, "trial_timeout_s": 600,
                         **({} if latency_repeats is None else {"latency_repeats": latency_repeats})}}
        path = Path(tmp) / "search.yaml"
        path.write_text(yaml.safe_dump(cfg))
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        summary = run_search(load_config(path))
        wall = time.perf_counter() - t0
    return {"n_jobs": n_jobs, "trials": summary["n_complete"], "failed": summary["n_failed"], "wall_s": wall,
            "trials_per_hour": 3600 * summary["n_complete"] / wall}


def bench_teacher(spec: TaskSpec, task: Any, device: str, threads: int, repeats: int, seed: int) -> dict[str, float]:
    spec = spec.teacher_spec(seed)  # a regular task: its teacher learns from task.train
    torch.set_num_threads(threads)
    secs, accs = [], []
    for _ in range(repeats):
        model = spec.build()
        t0 = time.perf_counter()
        accs.append(train_teacher(model, task.train, task.val, epochs=spec.epochs, lr=spec.lr,
                                  batch_size=spec.batch_size, seed=spec.seed, weight_decay=spec.weight_decay,
                                  device=device, num_threads=threads))
        secs.append(time.perf_counter() - t0)
    return {"seconds": _med(secs), "accuracy": _med(accs)}


def bench_trials(objective: Objective, policies: list[dict], repeats: int) -> dict[str, Any]:
    objective(policies[0])  # untimed warm-up
    train, evals, accs = [], [], []
    for params in policies:
        runs = [objective(params) for _ in range(repeats)]
        train.append(_med([r.timing["train_s"] for r in runs]))
        evals.append(_med([r.timing["eval_s"] for r in runs]))
        accs.append(runs[0].metrics["accuracy"])
    return {"train_s": _med(train), "eval_s": _med(evals), "trial_s": _med([a + b for a, b in zip(train, evals)]),
            "accuracy": accs, "per_policy_train_s": train}


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(res))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every task; the results so far are written after each one."""
    sets = settings(args.devices)
    out: dict[str, Any] = {"settings": {k: {"device": d, "threads": t} for k, (d, t) in sets.items()},
                           "seed": args.seed, "policies": args.policies, "repeats": args.repeats,
                           "machine": machine(), "cuda": torch.cuda.get_device_name(0) if "cuda" in sets else None,
                           "tasks": {}}
    if args.merge:  # the tasks of an earlier run stay (each row records its own policies and repeats)
        earlier = json.loads(Path(args.merge).read_text())
        out["tasks"] = {name: {"policies": earlier["policies"], "repeats": earlier["repeats"], **row}
                        for name, row in earlier["tasks"].items()}
    for name in [*args.tasks, *(f"digits-cnn-x{n}" for n in args.wide)]:
        spec, wide = task_spec(name), name not in BUILTIN_TASKS
        cfg = load_config(HERE / "configs" / f"{'digits-cnn' if wide else name}.yaml")
        task = _build(spec, args.seed, args.cache_dir, False) if wide else load_task(name, cache_dir=args.cache_dir,
                                                                                    seed=args.seed)
        space = build_space(cfg, task)
        policies = space.space_filling(args.policies, seed=args.seed)
        latency_repeats = args.latency_repeats if args.latency_repeats is not None else cfg.train.latency_repeats
        reference = teacher_metrics(task, latency_repeats=latency_repeats)
        row: dict[str, Any] = {"n_params": task.info["n_params"], "n_train": task.info["n_train"],
                               "policies": args.policies, "repeats": args.repeats, "latency_repeats": latency_repeats,
                               "batch_size": cfg.train.batch_size, "teacher": {}, "trial": {}}
        for key, (device, threads) in sets.items():
            print(f"{name}: {key}", flush=True)
            row["teacher"][key] = bench_teacher(spec, task, device, threads, args.repeats, args.seed)
            torch.set_num_threads(threads)
            objective = Objective(task, space, reference, batch_size=cfg.train.batch_size, device=device,
                                  latency_repeats=latency_repeats, seed=args.seed)
            row["trial"][key] = bench_trials(objective, policies, args.repeats)
        for search in args.searches:
            device, n_jobs = search.split(":")
            if device == "cuda" and "cuda" not in sets:
                continue
            print(f"{name}: search {search}", flush=True)
            row.setdefault("search", {})[search] = bench_search(name, device, int(n_jobs), args.search_trials,
                                                                args.seed, args.latency_repeats, args.cache_dir)
        if "cuda" in sets and "cpu1" in sets:
            deltas = [abs(a - b) * 100 for a, b in zip(row["trial"]["cuda"]["accuracy"], row["trial"]["cpu1"]["accuracy"])]
            row["agreement_pp"] = {"median": _med(deltas), "max": max(deltas)}
        out["tasks"][name] = row
        write(out, args.out)
    return out


def _cell(part: dict[str, Any], key: str, field: str) -> str:
    return f"{part[key][field]:.2f}" if key in part else "–"


def markdown(res: dict[str, Any]) -> str:
    keys = list(res["settings"])
    cores = res["machine"]["cores"]
    lines = [
        "# GPU against CPU: teacher training and search trials",
        "",
        f"Machine: {res['cuda'] or 'no GPU'}; CPU {res['machine']['cpu']} ({cores} cores); torch "
        f"{res['machine']['torch']}. Seed {res['seed']}; per task, `n × r`: n space-filling policies, r repeats each "
        "(medians over repeats, then over policies). Written by `experiments/bench_gpu.py`.",
        "",
        "Settings: " + ", ".join(f"`{k}` = {v['device']} with {v['threads']} torch thread(s)"
                                 for k, v in res["settings"].items()) + ".",
        "",
        "| task | params | n × r | " + " | ".join(f"teacher s ({k})" for k in keys) + " | "
        + " | ".join(f"trial train s ({k})" for k in keys) + " | eval s (CPU, median of settings) | Δacc CUDA/CPU pp (median / max) |",
        "|---" * (4 + 2 * len(keys)) + "|---|",
    ]
    for name, row in res["tasks"].items():
        agree = row.get("agreement_pp")
        lines.append(
            f"| {name} | {row['n_params']:,} | {row.get('policies', res['policies'])} × "
            f"{row.get('repeats', res['repeats'])} | "
            + " | ".join(_cell(row["teacher"], k, "seconds") for k in keys) + " | "
            + " | ".join(_cell(row["trial"], k, "train_s") for k in keys) + " | "
            + f"{statistics.median(r['eval_s'] for r in row['trial'].values()):.2f} | "
            + (f"{agree['median']:.1f} / {agree['max']:.1f}" if agree else "–") + " |")
    if "cuda" in keys and "cpu1" in keys:
        lines += ["", "Throughput, trials per hour (derived: one CUDA worker; one 1-thread CPU worker per core, "
                  "assuming perfect scaling):", "",
                  "| task | CUDA, 1 worker | CPU, 1 worker | CPU, %d workers (bound) |" % cores, "|---|---|---|---|"]
        for name, row in res["tasks"].items():
            if not {"cuda", "cpu1"} <= set(row["trial"]):
                continue
            g, c = row["trial"]["cuda"]["trial_s"], row["trial"]["cpu1"]["trial_s"]
            lines.append(f"| {name} | {3600 / g:.0f} | {3600 / c:.0f} | {cores * 3600 / c:.0f} |")
    searched = {name: row["search"] for name, row in res["tasks"].items() if row.get("search")}
    if searched:
        lines += ["", "Searches, measured (`--searches`: device:workers; TPE, no warm start, no MLflow; trials per "
                  "hour over the whole call, worker start included):", "",
                  "| task | device:workers | trials | wall s | trials per hour |", "|---|---|---|---|---|"]
        for name, runs in searched.items():
            lines += [f"| {name} | {k} | {r['trials']} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} |"
                      for k, r in runs.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    regular = sorted(n for n, s in BUILTIN_TASKS.items() if s.n_way is None and (HERE / "configs" / f"{n}.yaml").is_file())
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=regular, metavar="TASK")
    ap.add_argument("--devices", nargs="+", default=["cuda", "cpu"], choices=["cuda", "cpu"])
    ap.add_argument("--policies", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--wide", nargs="*", type=int, default=[], metavar="N",
                    help="also digits-cnn with every width N times larger (digits-cnn-xN)")
    ap.add_argument("--latency-repeats", type=int, default=None, help="timed repeats of the CPU latency in a trial's "
                    "evaluation (default: the task config's)")
    ap.add_argument("--searches", nargs="*", default=[], metavar="DEVICE:WORKERS",
                    help="real searches to time, e.g. cuda:1 cuda:4 cpu:16")
    ap.add_argument("--search-trials", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="teacher cache (default: ~/.cache/metacompress)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--merge", type=Path, default=None, help="keep the tasks of this earlier gpu.json")
    args = ap.parse_args(argv)
    print(markdown(run(args)))


if __name__ == "__main__":
    main()
