"""Is a student's measured speedup over its teacher the same whatever else the machine is doing?

A search times its teacher once, at the start, and every student when its trial ends; on a machine with other work
(the next trial training on the next core, a shared cluster node) the load at those moments differs. Two ways of
measuring are compared, on the same students:

* ``apart`` (how metacompress measured before, here with the new timed blocks): the teacher timed alone at the
  start, idle; each student timed alone later, its ``speedup`` = teacher / student.
  ``learners.evaluate(..., reference=teacher_metrics)``.
* ``paired`` (now): the student timed in rounds with the teacher's inference form, block for block, its
  ``speedup`` the ratio of the two models' fastest blocks.
  ``evaluate(..., reference=..., baseline=deployable(teacher))``.

Each is measured idle and under load (``--load`` busy processes, a Python spin loop each, started after the
teacher's reference timing), ``--repeats`` times. Students, per task (seed 0, every compressible layer, 16 bits, so
that no layer runs the int8 kernels and the computation differs from the teacher's only by the pruning):

* ``unstructured 50 %``: the teacher's shapes with half the weights zero: the true speedup is 1.0;
* ``structured 50 %``: half the channels / features removed: a real speedup, whose size the idle runs show.

Reported per cell: the median speedup and its spread over the repeats (min–max).

And the choices inside ``paired``, on the unstructured students under load (true ratio 1.0): how long a timed block
is (``learners.measure.BLOCK_S``: 1 ms, 0.2 ms, 0.05 ms) and how the rounds are summarized (the median of the
rounds' ratios, or the ratio of each model's fastest block), ``--repeats`` measurements of 20 rounds each.

CPU, one torch thread. About 3 minutes on 2 cores. Writes ``results/latency.json`` and ``.md``.

Usage::

    python experiments/bench_latency.py
    python experiments/bench_latency.py --tasks digits-mlp --repeats 2 --out /tmp/l   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from benchinfo import machine

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("digits-mlp", "digits-cnn")
STUDENTS = {"unstructured 50 %": "unstructured", "structured 50 %": "structured"}


def _students(task: Any) -> dict[str, torch.nn.Module]:
    from metacompress.learners import compress, describe_layers
    from metacompress.spaces import CompressionPolicy

    example = task.example_input(2)
    names = [info.name for info in describe_layers(task.teacher, example)]
    out = {}
    for label, method in STUDENTS.items():
        torch.manual_seed(0)
        out[label] = compress(task.teacher, CompressionPolicy.uniform(names, 0.5, 16, prune_method=method), example)
    return out


def _load(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5)  # let them reach the cores
    return procs


def task_cells(name: str, repeats: int, load: int) -> dict[str, Any]:
    from metacompress.learners import deployable, evaluate, load_task
    from metacompress.search.objective import teacher_metrics

    task = load_task(name)
    reference = teacher_metrics(task)  # idle, as at a search's start
    baseline = deployable(task.teacher, int8=False)
    students = _students(task)
    cells: dict[str, Any] = {"teacher_latency_ms": reference["latency_ms"]}
    for condition in ("idle", "loaded"):
        procs = _load(load) if condition == "loaded" else []
        try:
            for label, student in students.items():
                runs: dict[str, list[float]] = {"apart": [], "paired": []}
                for _ in range(repeats):
                    val, example = task.val, task.example_input(1)
                    runs["apart"].append(evaluate(student, val, example, reference=reference)["speedup"])
                    runs["paired"].append(evaluate(student, val, example, reference=reference,
                                                   baseline=baseline)["speedup"])
                for method, values in runs.items():
                    cells.setdefault(label, {}).setdefault(condition, {})[method] = {
                        "median": statistics.median(values), "min": min(values), "max": max(values),
                        "values": values}
                print(f"{name:12s} {label:18s} {condition:6s} apart {statistics.median(runs['apart']):.2f}  "
                      f"paired {statistics.median(runs['paired']):.2f}", flush=True)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    return cells


BLOCKS = (1e-3, 2e-4, 5e-5)


def block_ablation(name: str, repeats: int, load: int) -> dict[str, Any]:
    """Under load: the unstructured student's ratio to its teacher by block length and summary (true: 1.0)."""
    from metacompress.learners import deployable, load_task
    from metacompress.learners import measure

    task = load_task(name)
    teacher = deployable(task.teacher, int8=False)
    student = deployable(_students(task)["unstructured 50 %"], int8=False)
    x = task.example_input(1)[:1]
    out: dict[str, Any] = {}
    default, procs = measure.BLOCK_S, _load(load)
    try:
        for block in BLOCKS:
            measure.BLOCK_S = block
            rounds = [measure.time_blocks([teacher, student], x, 20) for _ in range(repeats)]
            for summary, values in (
                    ("median of ratios", [statistics.median(a / b for a, b in zip(t, s)) for t, s in rounds]),
                    ("ratio of fastest", [min(t) / min(s) for t, s in rounds])):
                out.setdefault(f"{block * 1e3:g} ms", {})[summary] = {
                    "median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
            print(f"{name:12s} block {block * 1e3:g} ms under load: "
                  + "  ".join(f"{k} {v['min']:.2f}–{v['max']:.2f}" for k, v in out[f'{block * 1e3:g} ms'].items()),
                  flush=True)
    finally:
        measure.BLOCK_S = default
        for proc in procs:
            proc.kill()
            proc.wait()
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Speedup measured apart or in rounds with the teacher, idle and under load", "",
             f"`python experiments/bench_latency.py` ({result['repeats']} repeats per cell, seed 0, "
             f"{result['load']} busy processes for 'loaded', CPU, one torch thread; {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores). The speedup over the teacher at batch 1 (the search's "
             "`latency_ms` objective): median over the repeats and [min–max]. The unstructured student has the "
             "teacher's shapes: its true speedup is 1.0.", "",
             "'apart': each timed alone (the teacher once, idle, at the start), as before; 'paired': the student "
             "in rounds with the teacher (`evaluate(..., baseline=)`), as a search does now. Both with the "
             f"{result['block_ms']:g} ms blocks.", "",
             "| task | student | condition | apart (before) | paired (now) |", "|---|---|---|---|---|"]
    for name, cells in result["tasks"].items():
        for label in STUDENTS:
            for condition in ("idle", "loaded"):
                c = cells[label][condition]
                lines.append(f"| {name} | {label} | {condition} | "
                             + " | ".join(f"{c[m]['median']:.2f} [{c[m]['min']:.2f}–{c[m]['max']:.2f}]"
                                          for m in ("apart", "paired")) + " |")
    lines += ["", "Teacher latency at the start (idle): " + ", ".join(
        f"{name} {cells['teacher_latency_ms']:.3f} ms" for name, cells in result["tasks"].items()) + ".", "",
        "## Inside 'paired': block length and summary", "",
        f"The unstructured student against its teacher under load (true ratio 1.0), {result['repeats']} "
        "measurements of 20 rounds each: median [min–max]. The shipped setting is "
        f"{result['block_ms']:g} ms and the ratio of the fastest blocks.", "",
        "| task | block | median of the rounds' ratios | ratio of the fastest blocks |", "|---|---|---|---|"]
    for name, blocks in result["blocks"].items():
        for block, cell in blocks.items():
            lines.append(f"| {name} | {block} | " + " | ".join(
                f"{cell[k]['median']:.2f} [{cell[k]['min']:.2f}–{cell[k]['max']:.2f}]"
                for k in ("median of ratios", "ratio of fastest")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--load", type=int, default=2, help="busy processes for the 'loaded' condition")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from metacompress.learners.measure import BLOCK_S

    result = {"repeats": args.repeats, "load": args.load, "seed": 0, "block_ms": BLOCK_S * 1e3,
              "machine": machine(),
              "tasks": {name: task_cells(name, args.repeats, args.load) for name in args.tasks},
              "blocks": {name: block_ablation(name, args.repeats, args.load) for name in args.tasks}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "latency.md").write_text(_markdown(result))
    print(f"wrote {args.out / 'latency.json'} and latency.md")


if __name__ == "__main__":
    main()
