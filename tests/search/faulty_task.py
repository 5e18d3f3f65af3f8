"""A task plugin whose trials fail on a schedule: raise, NaN loss, or pass the time limit (imported as
``faulty_task:make_task`` with this folder on ``sys.path``/``PYTHONPATH``).

The teacher is the built-in digits-mlp teacher followed by a :class:`Trap`, a parameter-free module. Every trial
compresses its own copy of the teacher; the copy's trap picks its fault at its first forward pass in training mode
by taking the next entry of ``schedule`` from a counter file (``fcntl``-locked, so worker processes and reruns
share it). In eval mode (teacher metrics, evaluation, export) the trap is the identity. These are the real code
paths of a user's task that misbehaves; production code has no test hooks.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from metacompress.learners import Task, load_task

__all__ = ["Trap", "make_task", "retrained_task"]

FAULTS = ("ok", "raise", "nan", "sleep")


def _next_fault(counter: Path, schedule: Sequence[str]) -> str:
    counter.parent.mkdir(parents=True, exist_ok=True)
    with open(counter, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        n = int(fh.read().strip() or 0)
        fh.seek(0)
        fh.truncate()
        fh.write(str(n + 1))
        fh.flush()
        os.fsync(fh.fileno())
    return schedule[n] if n < len(schedule) else "ok"


class Trap(nn.Module):
    """Identity in eval mode; in training mode it may raise, return NaN, or sleep (once per copy)."""

    def __init__(self, counter: str, schedule: Sequence[str], sleep_s: float) -> None:
        super().__init__()
        self.counter, self.schedule, self.sleep_s = counter, list(schedule), float(sleep_s)
        self.fault: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or isinstance(x, torch.fx.Proxy):
            return x
        if self.fault is None:
            self.fault = _next_fault(Path(self.counter), self.schedule)
            if self.fault == "sleep":
                time.sleep(self.sleep_s)
        if self.fault == "raise":
            raise RuntimeError("faulty_task: injected failure")
        if self.fault == "nan":
            return x * float("nan")
        return x


def make_task(counter: str, schedule: Sequence[str] = (), sleep_s: float = 4.0) -> Task:
    """digits-mlp whose trials follow ``schedule`` (entries of :data:`FAULTS`; ``ok`` after its end)."""
    for fault in schedule:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
    base = load_task("digits-mlp")
    teacher = nn.Sequential(base.teacher, Trap(counter, schedule, sleep_s)).eval()
    return Task("faulty-digits", teacher, base.train, base.val, base.n_classes, info=dict(base.info))


def retrained_task(weight_noise: float = 0.0, seed: int = 0) -> Task:
    """digits-mlp with a "retrained" teacher: its weights perturbed by ``weight_noise`` (0: unchanged)."""
    base = load_task("digits-mlp")
    if weight_noise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in base.teacher.parameters():
                param.add_(weight_noise * param.std() * torch.randn(param.shape, generator=gen))
    return Task("retrained-digits", base.teacher, base.train, base.val, base.n_classes, info=dict(base.info))
