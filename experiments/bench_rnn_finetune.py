"""Fine-tuning speed of a compressed LSTM: the fused kernel on effective weights against the step-by-step recurrence.

``SplitRNN`` (``learners/recurrent.py``) runs ``nn.LSTM``'s fused kernel on its layers' masked, fake-quantized weights
whenever that computes what the step-by-step recurrence does (no activation fake-quant, no hooks on the layers); the
step-by-step path is what every trial ran before. This script fine-tunes the same compressed students of the
``examples/recurrent`` LSTM both ways, alternately (pair r: fused then step-by-step, or the reverse), and reports the
median seconds per epoch (CPU time of the process, one torch thread; wall time alongside), the speedup, and the
validation accuracy each way after the same epochs from the same seed, which agree up to float rounding.

Policies: 4 bits at 50 % structured and 3 bits at 80 % unstructured pruning, KD λ 0.7, T 4, lr 3e-3, batch 64,
seed 0; ``--repeats`` pairs of one epoch each (default 5) and ``--epochs`` (default 4) for the accuracy check.
Run ``python experiments/bench_rnn_finetune.py`` (about 30 s on one core); writes ``rnn_finetune.json`` and
``rnn_finetune.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from metacompress.learners import (
    FinetuneConfig,
    accuracy,
    compress,
    describe_layers,
    finetune,
    load_task,
    predict_logits,
)
from metacompress.learners.recurrent import SplitRNN
from metacompress.spaces import CompressionPolicy

from benchinfo import machine  # noqa: E402 (experiments/ is the script's folder)

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "recurrent"
POLICIES = {"4b/50%/structured": (4, 0.5, "structured"), "3b/80%/unstructured": (3, 0.8, "unstructured")}


def _way(stepwise: bool) -> contextlib.AbstractContextManager:
    """The step-by-step recurrence forced (as an activation fake-quant or a hook would), or left to decide."""
    return mock.patch.object(SplitRNN, "_fusable", return_value=False) if stepwise else contextlib.nullcontext()


def _finetune(task, policy: CompressionPolicy, logits, seed: int, stepwise: bool):
    """A fresh compressed student fine-tuned with ``policy``; returns it and the CPU and wall seconds it took."""
    torch.manual_seed(seed)
    student = compress(task.teacher, policy, task.example_input(2))
    cfg = FinetuneConfig(seed=seed, eval_every_epoch=False)
    with _way(stepwise):
        t0, c0 = time.perf_counter(), time.process_time()
        finetune(student, task.teacher, task.train, policy, config=cfg, teacher_logits=logits)
        return student, time.process_time() - c0, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    sys.path.insert(0, str(EXAMPLE))
    task = load_task({"factory": "digits_lstm:make_task"}, seed=0)
    names = [layer.name for layer in describe_layers(task.teacher, task.example_input(2))]
    logits = predict_logits(task.teacher, task.train.tensors[0])
    out = {}
    for label, (bits, prune, method) in POLICIES.items():
        policy = CompressionPolicy.uniform(names, prune=prune, bits=bits, prune_method=method, kd_lambda=0.7,
                                           temperature=4.0, epochs=args.epochs, lr=3e-3)
        one = dataclasses.replace(policy, epochs=1)
        times: dict[str, list[tuple[float, float]]] = {"fused": [], "stepwise": []}
        for r in range(args.repeats):
            for way in ("fused", "stepwise") if r % 2 == 0 else ("stepwise", "fused"):
                times[way].append(_finetune(task, one, logits, args.seed, way == "stepwise")[1:])
        acc = {way: accuracy(_finetune(task, policy, logits, args.seed, way == "stepwise")[0].eval(), task.val)
               for way in ("fused", "stepwise")}
        med = {way: {"cpu_s": statistics.median(t[0] for t in v), "wall_s": statistics.median(t[1] for t in v)}
               for way, v in times.items()}
        out[label] = {"epoch": med, "speedup_cpu": med["stepwise"]["cpu_s"] / med["fused"]["cpu_s"],
                      "speedup_wall": med["stepwise"]["wall_s"] / med["fused"]["wall_s"],
                      "accuracy_after_epochs": acc, "epochs": args.epochs,
                      "raw": {way: [list(t) for t in v] for way, v in times.items()}}
    return {"task": "digits-lstm (examples/recurrent)", "n_train": len(task.train), "batch_size": 64,
            "policies": out}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Fine-tuning a compressed LSTM: fused kernel vs step-by-step recurrence", "",
             f"`{res['command']}` — {m['cpu']}, torch {m['torch']}, 1 thread; load at start `{m['uptime']}`.", "",
             f"{res['task']}, {res['n_train']} training sequences of 8 steps, batch {res['batch_size']}, KD from "
             "cached teacher logits. Seconds per epoch are medians over alternating pairs (CPU time of the "
             "process; wall time in parentheses).", "",
             "| policy | fused s/epoch | step-by-step s/epoch | speedup | val acc fused | val acc step-by-step |",
             "|---|---|---|---|---|---|"]
    for label, r in res["policies"].items():
        e = r["epoch"]
        lines.append(f"| {label} | {e['fused']['cpu_s']:.2f} ({e['fused']['wall_s']:.2f}) | "
                     f"{e['stepwise']['cpu_s']:.2f} ({e['stepwise']['wall_s']:.2f}) | "
                     f"{r['speedup_cpu']:.2f}× ({r['speedup_wall']:.2f}×) | "
                     f"{100 * r['accuracy_after_epochs']['fused']:.2f} % | "
                     f"{100 * r['accuracy_after_epochs']['stepwise']:.2f} % |")
    lines += ["", f"Accuracies after {next(iter(res['policies'].values()))['epochs']} epochs from the same seed; "
              "the two paths compute the same function and gradients up to float rounding, so they may differ by a "
              "sample or two."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="alternating pairs of one epoch each")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the accuracy check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    info = machine()
    res = run(args)
    res.update({"command": f"python experiments/bench_rnn_finetune.py --repeats {args.repeats} --epochs "
                           f"{args.epochs} --seed {args.seed}", "machine": info})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rnn_finetune.json").write_text(json.dumps(res, indent=1))
    (args.out / "rnn_finetune.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
