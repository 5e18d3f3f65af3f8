"""The measured proxy: how much accuracy a compressed student keeps *before* any fine-tuning.

Compressing the teacher and evaluating it on up to :data:`~.features.PROBE_ROWS` validation rows (no training)
takes milliseconds for the zoo's models, and ranks policies by their real, fine-tuned retention far better than any
summary of the policy (AMC ranks its candidates by the same quantity). On the real trials of
``experiments/bench_warmstart.py`` its Spearman with fine-tuned retention is 0.74 alone (0.61 when its rows were
topped up with training rows), against 0.49 for the gradient-boosting predictor that knew no proxy.

Every search trial records it (``val_proxy_retention`` among the trial's metrics, see
:class:`~metacompress.search.objective.Objective`), so it is a column of the history (:data:`PROXY_NAME`); a warm
start measures it on a shortlist of the candidates the predictor ranks best without it
(:func:`~.propose.propose`), since the whole pool would take minutes.

The **tuned proxy** (:data:`TUNED_PROXY_NAME`, :meth:`ProxyProbe.tuned`) looks a little further: the same
retention after the first :func:`tuned_steps` optimizer steps of the policy's own fine-tuning (its loss, learning
rate and schedule, the search's seed and batch size), at most :data:`TUNED_STEPS` steps and half of the
fine-tuning: a lower fidelity of the trial, as in successive halving. Compression alone says how much a policy
destroys; the first steps say how much of it fine-tuning wins back (structured pruning and 2–3-bit layers lose most
before fine-tuning and recover most after it). It costs milliseconds to a third of a second on the zoo's models
(at most half of a trial's fine-tuning, none of its evaluation), so a warm start measures it on a few candidates
only (:mod:`.sequential`). A trial records it for free: it is the trial's own student after those steps
(:class:`~metacompress.search.objective.Objective`). Its metric name carries a version (``_v2``: at most 20
steps and half of the run; the first version, at most 10 steps and a quarter, ranked worse), so a history never
mixes the two: a search that recorded the first version reads as one whose tuned proxy was not measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metacompress.spaces import CompressionPolicy

from .features import _accuracy, _probe_data

__all__ = ["PROXY_NAME", "TUNED_PROXY_NAME", "TUNED_STEPS", "ProxyProbe", "tuned_steps"]

#: Name of the measured proxy, as a trial metric and as a measured input column of the history.
PROXY_NAME = "val_proxy_retention"
#: Name of the tuned proxy (retention after the first :func:`tuned_steps` fine-tuning steps), metric and column.
TUNED_PROXY_NAME = "val_tuned_proxy_retention_v2"
#: Fine-tuning steps of the tuned proxy at most.
TUNED_STEPS = 20
#: Share of a policy's fine-tuning steps the tuned proxy takes at most.
TUNED_SHARE = 0.5


def tuned_steps(epochs: int, n_train: int, batch_size: int, *, cap: int = TUNED_STEPS, share: float = TUNED_SHARE
                ) -> int:
    """Optimizer steps behind the tuned proxy of a policy that fine-tunes ``epochs`` epochs of ``n_train`` rows in
    batches of ``batch_size``: ``min(cap, share × its steps)``, at least 1 (0 without fine-tuning); by default
    ``cap`` = :data:`TUNED_STEPS` and ``share`` = :data:`TUNED_SHARE`.

    On the held-out zoo tasks' real trials of ``experiments/bench_warmstart.py``, alone as a ranker of fine-tuned
    retention (``experiments/bench_tuned_steps.py``): Spearman 0.839 at 10 steps and at most a quarter of the run
    (the default before), 0.859 at 20 and a share of 0.35, **0.894** at 20 and half (the default; 0.09 s per
    measurement against 0.05 s); the untuned proxy 0.738. 20 steps with no cap but the whole run score higher still,
    but that is no longer a proxy: on wine and breast-cancer 20 steps are all of the trial's fine-tuning, so it *is*
    the trial's outcome (wine 1.000).
    """
    total = int(epochs) * math.ceil(int(n_train) / max(int(batch_size), 1))
    return 0 if total <= 0 else max(1, min(int(cap), int(share * total)))


class ProxyProbe:
    """Measures the proxy of students of one task's teacher: probe-row accuracy / the teacher's, no training.

    The probe rows are validation rows only (up to :data:`~.features.PROBE_ROWS`, seeded): the rows a trial's
    accuracy is measured on, so the proxy is a cheap, early look at the search's own objective. The meta-features'
    sensitivity probes top a small validation set up with training rows; for the proxy that was worse: a teacher
    fits its training rows, so on them compression only loses accuracy, while on held-out rows pruning an
    over-fit teacher can gain it (breast-cancer; the module docstring and :func:`tuned_steps` give both rankings).
    The metric names (:data:`PROXY_NAME`, :data:`TUNED_PROXY_NAME`) changed with the rows, so proxies that older
    searches measured on the mixed rows are read as unmeasured, never as these.

    Args:
        task: A :class:`~metacompress.learners.Task`.
        seed: Seed of the probe rows (a subsample when the validation set has more than ``PROBE_ROWS``). Searches
            and the shipped history use the default, so a task's proxies are measured on the same rows.
    """

    def __init__(self, task: Any, *, seed: int = 0) -> None:
        self.task = task
        self.teacher = task.teacher
        self._teacher_logits: torch.Tensor | None = None
        self.example = task.example_input(2)
        self.x, self.y = _probe_data(task, seed, validation_only=True)
        self.teacher_accuracy = max(self._accuracy(self.teacher), 1e-6)

    @torch.no_grad()
    def _accuracy(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            return _accuracy(model, self.x.to(device), self.y.to(device))
        finally:
            model.train(was_training)

    def student_retention(self, student: nn.Module) -> float:
        """The proxy of an already compressed ``student`` (evaluated in eval mode; its mode is restored)."""
        return self._accuracy(student) / self.teacher_accuracy

    def __call__(self, policy: CompressionPolicy) -> float:
        """Compress the teacher with ``policy`` and return the student's proxy."""
        from metacompress.learners import compress  # noqa: PLC0415 (avoid an import cycle)

        return self.student_retention(compress(self.teacher, policy, self.example))

    def steps(self, policy: CompressionPolicy, batch_size: int = 64) -> int:
        """:func:`tuned_steps` of ``policy`` on this task."""
        return tuned_steps(policy.epochs, len(self.task.train), batch_size)

    def tuned(self, policy: CompressionPolicy, *, seed: int = 0, batch_size: int = 64, steps: int | None = None
              ) -> float:
        """The tuned proxy: compress the teacher with ``policy``, run the first :meth:`steps` steps of its
        fine-tuning exactly as a search trial of seed ``seed`` and batch size ``batch_size`` runs them (CPU), and
        return the student's proxy. ``steps`` overrides how many (``experiments/bench_tuned_steps.py`` compares
        them)."""
        return self.student_retention(self.tuned_student(policy, seed=seed, batch_size=batch_size, steps=steps))

    def tuned_student(self, policy: CompressionPolicy, *, seed: int = 0, batch_size: int = 64,
                      steps: int | None = None) -> nn.Module:
        """The student behind :meth:`tuned` (compressed, after those steps of its fine-tuning), for a look at more
        than its accuracy (``experiments/bench_tuned_signals.py``)."""
        from metacompress.learners import compress  # noqa: PLC0415 (avoid an import cycle)
        from metacompress.learners.distill import FinetuneConfig, finetune  # noqa: PLC0415
        from metacompress.learners.measure import predict_logits  # noqa: PLC0415

        torch.manual_seed(int(seed))
        student = compress(self.teacher, policy, self.example)
        steps = self.steps(policy, batch_size) if steps is None else int(steps)
        if steps:
            if self._teacher_logits is None:
                self._teacher_logits = predict_logits(self.teacher, self.task.train.tensors[0], device="cpu") \
                    if hasattr(self.task.train, "tensors") else None
            cfg = FinetuneConfig(batch_size=batch_size, seed=int(seed), stop_after=steps, eval_every_epoch=False)
            finetune(student, self.teacher, self.task.train, policy, config=cfg, teacher_logits=self._teacher_logits)
        return student

    def many(self, policies: Sequence[CompressionPolicy], *, budget_s: float | None = None,
             tuned: bool = False, seed: int = 0, batch_size: int = 64) -> np.ndarray:
        """The proxy (``tuned``: the tuned proxy, of ``seed`` and ``batch_size``) of each policy, in order; NaN
        for those not reached within ``budget_s`` seconds (the first is always measured)."""
        out = np.full(len(policies), np.nan)
        t0 = time.perf_counter()
        for i, policy in enumerate(policies):
            if i and budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            out[i] = self.tuned(policy, seed=seed, batch_size=batch_size) if tuned else self(policy)
        return out
