"""The trial objective shared by every backend: params -> policy -> compress -> fine-tune -> evaluate -> metrics.

Backends call :class:`Objective` with a point of the space; it returns a :class:`TrialOutcome` (its metrics include
``val_proxy_retention``, the student's validation accuracy before fine-tuning over the teacher's, an input of the
warm-start history: :mod:`metacompress.learners.meta.proxy`) or raises
:class:`TrialFailed` with a one-line reason (non-finite loss, time limit, out of memory, any other error), which
the backend records as a failed trial before going on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metacompress.learners import (
    FinetuneConfig,
    NonFiniteLossError,
    Task,
    compress,
    deployable,
    evaluate,
    export_compressed,
    finetune,
    predict_logits,
)
from metacompress.learners.meta.proxy import PROXY_NAME, TUNED_PROXY_NAME, ProxyProbe
from metacompress.spaces import CompressionPolicy, CompressionSpace, MetacompressError, invalid_value

__all__ = ["Objective", "TrialFailed", "TrialOutcome", "TrialTimeout", "resolve_device", "teacher_metrics"]

#: ``report(epoch, record) -> stop?``: the backend's hook for per-epoch accuracy (ASHA, Optuna pruners).
Reporter = Callable[[int, Mapping[str, float]], bool]


class TrialFailed(MetacompressError):
    """A trial could not produce metrics; ``str(exc)`` is the reason recorded with it."""


class TrialTimeout(TrialFailed):
    """The trial passed its time limit (checked after every epoch)."""


@dataclass
class TrialOutcome:
    """What one finished trial produced."""

    policy: CompressionPolicy
    metrics: dict[str, float]
    history: list[dict[str, float]]
    student: nn.Module
    timing: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def resolve_device(device: str, field: str = "train.device") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a device named explicitly must exist on this machine.

    Raises:
        ConfigError: ``cuda`` without a CUDA device, ``cuda:N`` past the last one, ``mps`` without MPS (naming
            ``field``), so that a search stops before any training instead of failing every trial.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise invalid_value(field, f"'auto' or 'cpu' on this machine (torch {torch.__version__} sees no CUDA "
                                "device)", device)
        if index and int(index) >= n:
            raise invalid_value(field, f"'cuda', 'cuda:0' to 'cuda:{n - 1}', 'auto' or 'cpu' on this machine",
                                device)
    if kind == "mps" and not torch.backends.mps.is_available():
        raise invalid_value(field, "'auto' or 'cpu' on this machine (MPS is not available)", device)
    return device


def teacher_metrics(task: Task, *, latency_repeats: int = 20, device: str = "cpu") -> dict[str, float]:
    """The uncompressed teacher's metrics (the reference every student is compared with)."""
    m = evaluate(task.teacher, task.val, task.example_input(1), latency_repeats=latency_repeats, device=device)
    m["compression_ratio"] = 1.0
    return m


class Objective:
    """Evaluate points of ``space`` on ``task``.

    Args:
        task: Teacher and data.
        space: The search space (decodes params into a policy).
        reference: The teacher's metrics (:func:`teacher_metrics`); gives ``compression_ratio`` and ``speedup``.
        batch_size: Fine-tuning batch size.
        device: ``auto``, ``cpu`` or ``cuda``.
        latency_repeats: Timed repeats per batch size (0 skips latency).
        trial_timeout_s: Per-trial time limit, checked after each epoch.
        seed: Seed of the batch order and of torch's RNG.
    """

    def __init__(
        self, task: Task, space: CompressionSpace, reference: Mapping[str, float], *, batch_size: int = 64,
        device: str = "auto", latency_repeats: int = 20, trial_timeout_s: float = 600.0, seed: int = 0,
    ) -> None:
        self.task, self.space, self.reference = task, space, dict(reference)
        self.device = resolve_device(device)
        self.batch_size, self.latency_repeats = batch_size, latency_repeats
        self.trial_timeout_s, self.seed = trial_timeout_s, seed
        self.example = task.example_input(2)
        x = task.train.tensors[0] if hasattr(task.train, "tensors") else None
        # The teacher is frozen and the data fixed: its logits are computed once for all trials.
        self.teacher_logits = None if x is None else predict_logits(task.teacher, x, device=self.device)
        self.proxy = ProxyProbe(task)  # the history's measured input: accuracy before fine-tuning (fixed rows)
        self._baseline: nn.Module | None = None  # the teacher's inference form, timed beside each student

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_baseline": None}  # built again where the objective runs (a Ray worker)

    def baseline(self) -> nn.Module:
        """The teacher's float inference form, built once: each trial's student is timed in rounds with it."""
        if self._baseline is None:
            self._baseline = deployable(self.task.teacher, int8=False).cpu()
        return self._baseline

    def __call__(self, params: Mapping[str, Any], report: Reporter | None = None) -> TrialOutcome:
        """Run one trial; ``report`` is called after each epoch and may stop it early."""
        t0 = time.perf_counter()
        policy = self.space.decode(params)
        stopped = False

        def on_epoch(epoch: int, record: Mapping[str, float]) -> bool:
            nonlocal stopped
            if time.perf_counter() - t0 > self.trial_timeout_s:
                raise TrialTimeout(f"time limit of {self.trial_timeout_s:g} s passed after epoch {epoch}")
            stopped = bool(report(epoch, record)) if report is not None else False
            return stopped

        try:
            torch.manual_seed(self.seed)
            student = compress(self.task.teacher, policy, self.example)
            proxy = self.proxy.student_retention(student)
            tuned: dict[str, float] = {}
            at = self.proxy.steps(policy, self.batch_size)

            def on_step(step: int) -> None:  # the tuned proxy: this very student after its first steps
                if step == at:
                    tuned[TUNED_PROXY_NAME] = self.proxy.student_retention(student)

            cfg = FinetuneConfig(batch_size=self.batch_size, device=self.device, seed=self.seed, on_step=on_step)
            history = finetune(student, self.task.teacher, self.task.train, policy, val=self.task.val,
                               config=cfg, teacher_logits=self.teacher_logits, callback=on_epoch)
            t1 = time.perf_counter()
            metrics = evaluate(student.cpu(), self.task.val, self.example, reference=self.reference,
                               latency_repeats=self.latency_repeats,
                               baseline=self.baseline() if self.latency_repeats > 0 else None)
            metrics[PROXY_NAME] = proxy
            metrics.update(tuned if policy.epochs else {TUNED_PROXY_NAME: proxy})  # no fine-tuning: the proxy
        except TrialFailed:
            raise
        except NonFiniteLossError as exc:
            raise TrialFailed(f"non-finite loss: {exc}") from exc
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise TrialFailed(f"out of memory: {exc}") from exc
        except MetacompressError:
            raise
        except Exception as exc:  # noqa: BLE001 - any error of one trial must not end the search
            raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        timing = {"train_s": t1 - t0, "eval_s": time.perf_counter() - t1}
        return TrialOutcome(policy, metrics, history, student, timing, stopped)

    def save(self, outcome: TrialOutcome, path: str | Path) -> int:
        """Export the trial's student in the packed format; returns the file size."""
        return export_compressed(outcome.student, path, tuple(self.task.input_shape))
