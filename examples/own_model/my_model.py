"""Compress your own model: a task factory, the one piece of code metacompress needs from you.

``my_model.yaml`` next to this file names ``my_model:make_task``; ``metacompress search my_model.yaml`` imports this
module (from the Python path, else from the config's folder or the working directory), calls ``make_task`` and
compresses the model it returns. Replace the architecture, the weights and the data with yours: the teacher is any
trained ``nn.Module`` that maps a batch of inputs to class logits, and ``train``/``val`` are map-style datasets of
``(input, label)`` pairs (a ``TensorDataset`` is fastest).

This example trains its teacher, a small CNN on scikit-learn's bundled 8x8 digits, the first time it is called and
keeps the weights in ``weights`` (a few seconds on a CPU), so it runs anywhere without a download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from metacompress.learners import Task


class DigitsNet(nn.Module):
    """Your architecture: two convolutions and a classifier head."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _data(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Your data: here scikit-learn's digits, 80 % to distill on and 20 % to score on."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)

    def as_dataset(inputs, labels) -> TensorDataset:
        return TensorDataset(torch.tensor(inputs, dtype=torch.float32).reshape(-1, 1, 8, 8),
                             torch.tensor(labels, dtype=torch.int64))

    return as_dataset(x_train, y_train), as_dataset(x_val, y_val)


def _train(model: nn.Module, data: TensorDataset, seed: int, epochs: int = 15) -> None:
    """Stands in for your own training: metacompress only needs the trained weights."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (and far faster on busy cores)
    model.train()
    try:
        for _ in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def make_task(weights: str = "digits_net.pt", seed: int = 0) -> Task:
    """The factory ``my_model.yaml`` names: your trained model and your data as a :class:`~metacompress.learners.Task`.

    Args:
        weights: The teacher's ``state_dict`` (relative paths are next to this file); trained and saved when missing.
        seed: The split's seed (metacompress passes the task's ``seed``, ``task: {factory: ..., seed: 3}``, to a
            factory that has this parameter; 0 unless set).
    """
    train, val = _data(seed)
    path = Path(weights) if Path(weights).is_absolute() else Path(__file__).with_name(weights)
    model = DigitsNet()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))  # weights only: nothing is unpickled
    else:
        _train(model, train, seed)
        torch.save(model.state_dict(), path)
    return Task("my-digits-net", model.eval(), train, val, n_classes=10)
