"""Meta-knowledge distillation for few-shot tasks: a Reptile-meta-trained student initialization θ*.

Few-shot tasks are N-way K-shot variants of one zoo task (:func:`metacompress.learners.tasks.fewshot_task`; the
seed draws the classes, the shots and the teacher, which sees all data of its classes). The compressed student's
architecture and masks are fixed by one policy. Reptile (Nichol et al., 2018) meta-trains θ* over the meta-train
tasks: per episode, copy θ*, fine-tune on that task's K shots with KD from its teacher for ``--inner`` steps, and
move θ* a fraction ε (annealed) toward the adapted weights. On each held-out task the student is fine-tuned for the
same ``--steps`` full-batch steps on its K shots with KD from its teacher, starting from

* ``meta``: θ*, with the proximal term μ‖θ − θ*‖² (``--mu``),
* ``meta_nomu``: θ* without the proximal term,
* ``teacher``: the held-out task's own compressed teacher (the normal path of a search),
* ``scratch``: a random initialization of the same compressed architecture,

and its validation accuracy is measured. Two compression levels: moderate (50 % pruned, 4-bit) and aggressive
(80 % pruned, 2-bit), where the compressed teacher is damaged most. Writes ``experiments/results/metakd.json``
and ``.md``.

Usage::

    python experiments/bench_metakd.py [--base digits-cnn --way 5 --shot 5 --train-seeds 1 2 3 4 5 6
                                        --test-seeds 0 7 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metacompress.learners import FinetuneConfig, accuracy, compress, describe_layers, finetune, predict_logits
from metacompress.learners.tasks import fewshot_task
from metacompress.spaces import CompressionPolicy, LayerPolicy

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
LEVELS = {"moderate": (0.5, 4), "aggressive": (0.8, 2)}


def policy_for(task: Any, prune: float, bits: int, *, steps: int, lr: float, mu: float = 0.0) -> CompressionPolicy:
    """One compression level on every layer; ``steps`` full-batch epochs of KD fine-tuning."""
    layers = describe_layers(task.teacher, task.example_input(2))
    return CompressionPolicy({info.name: LayerPolicy(prune=prune, bits=bits) for info in layers},
                             kd_lambda=0.5, temperature=4.0, epochs=steps, lr=lr, prox_mu=mu)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def tune(student: torch.nn.Module, task: Any, policy: CompressionPolicy, seed: int,
         reference: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Full-batch KD fine-tuning on the task's K shots (``policy.epochs`` steps)."""
    cfg = FinetuneConfig(batch_size=len(task.train), device="cpu", seed=seed, eval_every_epoch=False)
    finetune(student, task.teacher, task.train, policy, config=cfg, reference=reference,
             teacher_logits=predict_logits(task.teacher, task.train.tensors[0]))
    return student


def reptile(template: torch.nn.Module, tasks: list[Any], policy: CompressionPolicy, *, episodes: int,
            meta_lr: float, seed: int) -> dict[str, torch.Tensor]:
    """Meta-train θ* (parameters of ``template``) with Reptile over ``tasks``."""
    theta = params_of(template)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        task = tasks[int(rng.integers(len(tasks)))]
        student = copy.deepcopy(template)
        with torch.no_grad():
            for n, p in student.named_parameters():
                p.copy_(theta[n])
        tune(student, task, policy, seed + e)
        eps = meta_lr * (1.0 - e / episodes)
        adapted = params_of(student)
        theta = {n: theta[n] + eps * (adapted[n] - theta[n]) for n in theta}
    return theta


def scratch_like(template: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same compressed architecture (and masks) with freshly initialized parameters."""
    torch.manual_seed(seed)
    student = copy.deepcopy(template)
    for m in student.modules():
        if m is not student and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return student


def run_level(level: str, train_tasks: list[Any], test_tasks: list[Any], args: argparse.Namespace
              ) -> dict[str, Any]:
    prune, bits = LEVELS[level]
    inner = policy_for(train_tasks[0], prune, bits, steps=args.inner, lr=args.lr)
    template = compress(train_tasks[0].teacher, inner, train_tasks[0].example_input(2))
    t0 = time.perf_counter()
    theta = reptile(template, train_tasks, inner, episodes=args.episodes, meta_lr=args.meta_lr, seed=args.seed)
    meta_s = time.perf_counter() - t0
    rows = []
    for task in test_tasks:
        tuned = policy_for(task, prune, bits, steps=args.steps, lr=args.lr)
        prox = policy_for(task, prune, bits, steps=args.steps, lr=args.lr, mu=args.mu)
        row: dict[str, Any] = {"task": task.name, "seed": task.info["seed"],
                               "teacher_accuracy": float(task.info["teacher_accuracy"])}
        for rep in range(args.repeats):
            meta = copy.deepcopy(template)
            with torch.no_grad():
                for n, p in meta.named_parameters():
                    p.copy_(theta[n])
            starts = {
                "meta": (meta, prox, theta),
                "meta_nomu": (copy.deepcopy(meta), tuned, None),
                "teacher": (compress(task.teacher, tuned, task.example_input(2)), tuned, None),
                "scratch": (scratch_like(template, args.seed + rep), tuned, None),
            }
            for name, (student, policy, ref) in starts.items():
                row.setdefault(f"{name}_zero_step", []).append(accuracy(student.eval(), task.val))
                tune(student, task, policy, args.seed + rep, reference=ref)
                row.setdefault(name, []).append(accuracy(student, task.val))
        rows.append({k: (float(np.mean(v)) if isinstance(v, list) else v) for k, v in row.items()})
    methods = ["meta", "meta_nomu", "teacher", "scratch"]
    mean = {m: float(np.mean([r[m] for r in rows])) for m in methods}
    mean0 = {m: float(np.mean([r[f"{m}_zero_step"] for r in rows])) for m in methods}
    return {"prune": prune, "bits": bits, "meta_train_s": round(meta_s, 1), "mean_accuracy": mean,
            "mean_accuracy_before_tuning": mean0, "per_task": rows,
            "meta_wins": mean["meta"] > max(mean["teacher"], mean["scratch"])}


def write_md(result: dict[str, Any], out: Path = RESULTS) -> None:
    a = result["args"]
    lines = [
        "# Meta-KD: Reptile-meta-trained student initialization for few-shot tasks",
        "",
        f"{a['way']}-way {a['shot']}-shot tasks of `{a['base']}` (seed = class subset, shots and teacher). "
        f"θ* meta-trained with Reptile on seeds {a['train_seeds']} ({a['episodes']} episodes × {a['inner']} "
        f"inner KD steps); evaluated on held-out seeds {a['test_seeds']} (seed 0 = `digits-5w5s`). Every start "
        f"gets the same {a['steps']} full-batch KD steps (λ=0.5, T=4, lr={a['lr']}) on the {a['shot']} shots per "
        f"class; `meta` adds μ‖θ−θ*‖² with μ={a['mu']}. Validation accuracy, mean over held-out tasks "
        f"({a['repeats']} repeats each).",
        "",
        "| compression | θ* + prox (meta) | θ* (no prox) | compressed teacher | scratch | θ* before tuning | "
        "teacher before tuning |",
        "|---|---|---|---|---|---|---|",
    ]
    for level, r in result["levels"].items():
        m, z = r["mean_accuracy"], r["mean_accuracy_before_tuning"]
        lines.append(f"| {level} ({int(r['prune'] * 100)} % pruned, {r['bits']}-bit) | {m['meta']:.3f} | "
                     f"{m['meta_nomu']:.3f} | {m['teacher']:.3f} | {m['scratch']:.3f} | {z['meta']:.3f} | "
                     f"{z['teacher']:.3f} |")
    lines += ["", result["verdict"], "", f"Machine: {result['machine']}; total {result['wall_s']} s. Reproduce: "
              "`.venv/bin/python experiments/bench_metakd.py`."]
    (out / "metakd.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="digits-cnn")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--train-seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--test-seeds", nargs="*", type=int, default=[0, 7, 8])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--meta-lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mu", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", nargs="*", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = [fewshot_task(args.base, args.way, args.shot, seed=s) for s in args.train_seeds]
    test = [fewshot_task(args.base, args.way, args.shot, seed=s) for s in args.test_seeds]
    levels = {level: run_level(level, train, test, args) for level in args.levels}
    wins = [lv for lv, r in levels.items() if r["meta_wins"]]
    best_other = {lv: max(r["mean_accuracy"]["teacher"], r["mean_accuracy"]["scratch"]) for lv, r in levels.items()}
    verdict = ("θ* wins at " + ", ".join(wins) if wins else "θ* does not win at any level") + ": " + "; ".join(
        f"{lv}: meta {r['mean_accuracy']['meta']:.3f} vs best other {best_other[lv]:.3f}" for lv, r in levels.items())
    result = {"args": {k.replace("-", "_"): v for k, v in vars(args).items() if k != "out"}, "levels": levels, "verdict": verdict,
              "machine": f"{platform.machine()} CPU, 1 torch thread", "wall_s": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metakd.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    write_md(result, args.out)
    print(verdict)


if __name__ == "__main__":
    main()
