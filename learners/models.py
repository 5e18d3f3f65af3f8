"""Teacher architectures for the built-in task zoo.

Every model here is a plain :class:`torch.nn.Module` that :func:`torch.fx.symbolic_trace` can trace: no
data-dependent control flow, activations and flattening are modules (``nn.ReLU``, ``nn.Flatten``), and residual
connections are a plain ``out = out + identity`` inside ``forward``. Structured channel pruning relies on this.
Convolutions followed by batch norm carry no bias.

Use :func:`make_model` to build a model by its registered name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from metacompress.spaces.errors import invalid_value, unknown_key

__all__ = ["MLP", "ResidualBlock", "DigitsCNN", "MNIST1DCNN", "MODELS", "make_model", "count_parameters"]


class MLP(nn.Sequential):
    """Fully connected classifier: ``Flatten -> [Linear -> ReLU (-> Dropout)] * n -> Linear``.

    Submodules are named ``flatten``, ``fc1``, ``act1``, ``drop1``, ..., ``head``.

    Args:
        in_features: Number of input features (the input is flattened first).
        hidden: Widths of the hidden layers, e.g. ``(128, 64)``.
        n_classes: Number of output logits.
        dropout: Dropout probability after every hidden activation; ``0`` adds no dropout module.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], n_classes: int, dropout: float = 0.0) -> None:
        _check_positive("model.in_features", in_features)
        _check_positive("model.n_classes", n_classes)
        if not 0.0 <= float(dropout) < 1.0:
            raise invalid_value("model.dropout", "in [0, 1)", dropout)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = int(in_features)
        for i, h in enumerate(hidden, start=1):
            _check_positive(f"model.hidden[{i - 1}]", h)
            layers[f"fc{i}"] = nn.Linear(width, int(h))
            layers[f"act{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(float(dropout))
            width = int(h)
        layers["head"] = nn.Linear(width, int(n_classes))
        super().__init__(layers)


class ResidualBlock(nn.Module):
    """Two same-width convolutions with batch norm and an identity skip: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + x)``.

    Args:
        channels: Input and output channels.
        kernel_size: Odd kernel size; padding keeps the spatial size.
        dim: 1 for ``Conv1d``/``BatchNorm1d``, 2 for ``Conv2d``/``BatchNorm2d``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, dim: int = 2) -> None:
        super().__init__()
        conv, bn = _conv_bn(dim)
        pad = kernel_size // 2
        self.conv1 = conv(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn1 = bn(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn2 = bn(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; the skip is a plain addition so that fx tracing sees it."""
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class DigitsCNN(nn.Module):
    """CNN for the 8x8 scikit-learn digits, input ``(N, 1, 8, 8)``; about 170k parameters.

    ``conv1(1->32) -> residual block(32) -> conv2(32->64, stride 2) -> flatten(64*4*4) -> fc(128) -> head``.

    Args:
        n_classes: Number of output logits.
        width: Channels of the first stage (the second stage has twice as many).
        hidden: Width of the fully connected layer before the head.
    """

    def __init__(self, n_classes: int = 10, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        for name, value in (("n_classes", n_classes), ("width", width), ("hidden", hidden)):
            _check_positive(f"model.{name}", value)
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.block = ResidualBlock(width, 3, dim=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width * 4 * 4, hidden)
        self.relu3 = nn.ReLU()
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, n_classes)`` for images of shape ``(N, 1, 8, 8)``."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.block(x)
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.fc(self.flatten(x)))
        return self.head(x)


class MNIST1DCNN(nn.Module):
    """1-D CNN for MNIST-1D, input ``(N, 1, 40)``, in the spirit of the MNIST-1D paper's CNN.

    ``conv1(1->C, k5) -> conv2(C->C, k5, stride 2) -> residual block(C) -> conv3(C->C, k5, stride 2)
    -> flatten(C*10) -> fc(hidden) -> head``.

    Args:
        n_classes: Number of output logits.
        channels: Channels of every convolution.
        hidden: Width of the fully connected layer before the head.
        length: Input sequence length (must be divisible by 4).
    """

    def __init__(self, n_classes: int = 10, channels: int = 32, hidden: int = 64, length: int = 40) -> None:
        super().__init__()
        for name, value in (("n_classes", n_classes), ("channels", channels), ("hidden", hidden)):
            _check_positive(f"model.{name}", value)
        if length <= 0 or length % 4:
            raise invalid_value("model.length", "a positive multiple of 4", length)
        c = channels
        self.conv1 = nn.Conv1d(1, c, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(c, c, 5, stride=2, padding=2, bias=False)
        self.bn2 = nn.BatchNorm1d(c)
        self.relu2 = nn.ReLU()
        self.block = ResidualBlock(c, 5, dim=1)
        self.conv3 = nn.Conv1d(c, c, 5, stride=2, padding=2, bias=False)
        self.bn3 = nn.BatchNorm1d(c)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c * (length // 4), hidden)
        self.relu4 = nn.ReLU()
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, n_classes)`` for signals of shape ``(N, 1, length)``."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.block(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.relu4(self.fc(self.flatten(x)))
        return self.head(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "digits-cnn": DigitsCNN,
    "mnist1d-cnn": MNIST1DCNN,
}
"""Registry of architecture names accepted by :func:`make_model`."""


def make_model(arch: str, **kwargs: object) -> nn.Module:
    """Build a registered architecture.

    Args:
        arch: A key of :data:`MODELS` (``"mlp"``, ``"digits-cnn"``, ``"mnist1d-cnn"``).
        **kwargs: Constructor arguments of that architecture.

    Returns:
        The freshly initialised model.

    Raises:
        ConfigError: If ``arch`` is unknown or an argument is not accepted.
    """
    if arch not in MODELS:
        raise unknown_key("task.arch", arch, MODELS)
    try:
        return MODELS[arch](**kwargs)
    except TypeError as exc:
        raise invalid_value("task.arch_kwargs", f"valid arguments of {arch!r} ({exc})", kwargs) from None


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _conv_bn(dim: int) -> tuple[type[nn.Module], type[nn.Module]]:
    if dim == 1:
        return nn.Conv1d, nn.BatchNorm1d
    if dim == 2:
        return nn.Conv2d, nn.BatchNorm2d
    raise invalid_value("model.dim", "1 or 2", dim)


def _check_positive(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise invalid_value(field, "a positive integer", value)
