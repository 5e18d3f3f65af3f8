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


class TokenClassifier(nn.Module):
    """Token ids in, class logits out: an embedding, one Transformer encoder layer, a linear head."""

    def __init__(self, vocab: int = 50, width: int = 32, n_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.encoder = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def make_token_task(seed: int = 0) -> Task:
    """Integer inputs (token ids): nothing may cast them to float. The teacher is untrained: the mechanics count."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (80, 12), generator=gen)
    labels = tokens[:, :3].sum(1) % 4
    torch.manual_seed(seed)
    return Task("tokens", TokenClassifier().eval(), TensorDataset(tokens[:60], labels[:60]),
                TensorDataset(tokens[60:], labels[60:]), 4)
