"""Task factories used by the plugin tests (imported as ``plugin_task:<name>``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from metacompress.learners.tasks import Task


def make_task(n_classes: int = 3, n_features: int = 6, seed: int = 0) -> Task:
    """A tiny linearly separable task with an (untrained) linear teacher."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(60, n_features, generator=gen)
    y = torch.arange(60) % n_classes
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(n_features, n_classes))
    return Task("plugin", teacher, TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:]), n_classes)


def not_a_task() -> dict:
    """A broken factory: returns a dict instead of a Task."""
    return {"name": "oops"}


NOT_CALLABLE = 42
