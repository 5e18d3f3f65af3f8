"""The measured proxy: how much accuracy a compressed student keeps *before* any fine-tuning.

Compressing the teacher and evaluating it on the probe rows (:data:`~.features.PROBE_ROWS`, no training) takes
milliseconds for the zoo's models, and ranks policies by their real, fine-tuned retention far better than any
summary of the policy (AMC ranks its candidates by the same quantity). On the real trials of
``experiments/bench_warmstart.py`` its held-out Spearman with fine-tuned retention is about 0.6 alone, against
0.49 for the gradient-boosting predictor without it.

Every search trial records it (``proxy_retention`` among the trial's metrics, see
:class:`~metacompress.search.objective.Objective`), so it is a column of the history (:data:`PROXY_NAME`); a warm
start measures it on a shortlist of the candidates the predictor ranks best without it
(:func:`~.propose.propose`), since the whole pool would take minutes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metacompress.spaces import CompressionPolicy

from .features import _accuracy, _probe_data

__all__ = ["PROXY_NAME", "ProxyProbe"]

#: Name of the measured proxy, as a trial metric and as the history's last input column.
PROXY_NAME = "proxy_retention"


class ProxyProbe:
    """Measures the proxy of students of one task's teacher: probe-row accuracy / the teacher's, no training.

    Args:
        task: A :class:`~metacompress.learners.Task`.
        seed: Seed of the probe rows (validation rows first, as :func:`~.features.layer_sensitivity`). Searches
            and the shipped history use the default, so a task's proxies are measured on the same rows.
    """

    def __init__(self, task: Any, *, seed: int = 0) -> None:
        self.teacher = task.teacher
        self.example = task.example_input(2)
        self.x, self.y = _probe_data(task, seed)
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

    def many(self, policies: Sequence[CompressionPolicy], *, budget_s: float | None = None) -> np.ndarray:
        """The proxy of each policy, in order; NaN for those not reached within ``budget_s`` seconds (the first
        is always measured)."""
        out = np.full(len(policies), np.nan)
        t0 = time.perf_counter()
        for i, policy in enumerate(policies):
            if i and budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            out[i] = self(policy)
        return out
