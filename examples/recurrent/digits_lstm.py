"""Compress an LSTM: its weight matrices are searched like any other layer.

``nn.LSTM`` (like ``nn.GRU`` and ``nn.RNN``) keeps its weights as raw parameters that a fused kernel reads;
metacompress rewrites each recurrent module of a factory's teacher with one ``nn.Linear`` per weight matrix (checked
to compute the same logits), so a search prunes and quantizes ``rnn.l0.ih`` (input to gates), ``rnn.l0.hh`` (hidden
state to gates), ... as well as the head, and structured pruning removes whole hidden units (a unit's gate rows and
every column that reads it). Nothing here is specific to that: this is an ordinary factory.

The teacher, a two-layer LSTM reading scikit-learn's 8x8 digits as a sequence of 8 rows, is trained the first time
``make_task`` is called (about ten seconds on a CPU) and kept in ``weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from metacompress.learners import Task


class DigitsLSTM(nn.Module):
    """Rows of pixels as time steps: a two-layer LSTM and a linear head on its last output."""

    def __init__(self, hidden: int = 48, layers: int = 2, n_classes: int = 10) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _split(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Digits as ``(8 rows, 8 pixels)`` sequences in [0, 1], 80 % to train, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    parts = train_test_split(images / 16.0, labels, test_size=0.2, random_state=seed, stratify=labels)
    x_train, x_val, y_train, y_val = (torch.tensor(p) for p in parts)
    return (TensorDataset(x_train.float().view(-1, 8, 8), y_train.long()),
            TensorDataset(x_val.float().view(-1, 8, 8), y_val.long()))


def _fit(model: nn.Module, data: TensorDataset, seed: int, epochs: int = 30) -> None:
    """Adam with a one-cycle learning rate, batches of 32."""
    torch.manual_seed(seed)
    batches = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=epochs * len(batches))
    model.train()
    for _ in range(epochs):
        for inputs, targets in batches:
            loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def make_task(weights: str = "digits_lstm.pt", seed: int = 0) -> Task:
    """The factory ``digits_lstm.yaml`` names.

    Args:
        weights: The teacher's ``state_dict`` (relative paths are next to this file); trained and saved when missing.
        seed: The split's and the training's seed.
    """
    train, val = _split(seed)
    path = Path(weights) if Path(weights).is_absolute() else Path(__file__).with_name(weights)
    model = DigitsLSTM()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        _fit(model, train, seed)
        torch.save(model.state_dict(), path)
    return Task("digits-lstm", model.eval(), train, val, n_classes=10)
