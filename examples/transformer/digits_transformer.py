"""Compress a Transformer: the attention projections are searched like any other layer.

``nn.MultiheadAttention`` keeps its query/key/value projections in one packed parameter read by a functional
forward; metacompress rewrites each attention module of a factory's teacher with one ``nn.Linear`` per projection
(checked to compute the same logits), so a search prunes and quantizes ``self_attn.q_proj``, ``k_proj``, ``v_proj``
and ``out_proj`` as well as the feed-forward layers. Nothing here is specific to that: this is an ordinary factory.

The teacher, a two-layer Transformer encoder reading scikit-learn's 8x8 digits as 8 tokens (one per image row), is
trained the first time ``make_task`` is called (about ten seconds on a CPU) and kept in ``weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from metacompress.learners import Task


class DigitsTransformer(nn.Module):
    """Rows of pixels as tokens: a linear embedding, learned positions, a Transformer encoder, a mean-pooled head."""

    def __init__(self, width: int = 32, heads: int = 4, layers: int = 2, n_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.zeros(1, 8, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


def _data(seed: int) -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)

    def as_dataset(inputs, labels) -> TensorDataset:
        return TensorDataset(torch.tensor(inputs, dtype=torch.float32).reshape(-1, 8, 8),
                             torch.tensor(labels, dtype=torch.int64))

    return as_dataset(x_train, y_train), as_dataset(x_val, y_val)


def _train(model: nn.Module, data: TensorDataset, seed: int, epochs: int = 40) -> None:
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()


def make_task(weights: str = "digits_transformer.pt", seed: int = 0) -> Task:
    """The factory ``digits_transformer.yaml`` names.

    Args:
        weights: The teacher's ``state_dict`` (relative paths are next to this file); trained and saved when missing.
        seed: The split's and the training's seed.
    """
    train, val = _data(seed)
    path = Path(weights) if Path(weights).is_absolute() else Path(__file__).with_name(weights)
    model = DigitsTransformer()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        _train(model, train, seed)
        torch.save(model.state_dict(), path)
    return Task("digits-transformer", model.eval(), train, val, n_classes=10)
