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


def raises() -> Task:
    """A factory whose own code fails (its data source is down)."""
    raise OSError("my data bucket is down")


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


class TiedTokenModel(nn.Module):
    """Token ids in, a score per vocabulary entry out, the output head tied to the embedding (one Parameter)."""

    def __init__(self, vocab: int = 12, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(tokens).mean(1))))


def make_tied_task(seed: int = 0) -> Task:
    """Which token comes first, over a vocabulary of 12; the (untrained) teacher ties its head to its embedding."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 12, (80, 5), generator=gen)
    torch.manual_seed(seed)
    return Task("tied", TiedTokenModel().eval(), TensorDataset(tokens[:60], tokens[:60, 0]),
                TensorDataset(tokens[60:], tokens[60:, 0]), 12)


class RecurrentClassifier(nn.Module):
    """A sequence of 4 steps of 4 features (16 inputs), a two-layer bidirectional LSTM (or GRU, or RNN), a linear
    head on the last step. ``packed=True`` runs it on a PackedSequence of per-row lengths 1 to 4; ``raw=True`` makes
    its forward read the recurrent layer's own ``weight_ih_l0``, which the one-Linear-per-matrix rewrite removes."""

    def __init__(self, kind: str = "lstm", packed: bool = False, raw: bool = False) -> None:
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.packed, self.raw = packed, raw
        self.rnn = cls(4, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.view(-1, 4, 4)
        if self.packed:
            lengths = torch.arange(len(x)) % 4 + 1
            packed = nn.utils.rnn.pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
            out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=4)
        else:
            out, _ = self.rnn(seq)
        if self.raw:
            out = out + 0 * self.rnn.weight_ih_l0.sum()
        return self.head(out[:, -1])


def recurrent_task(kind: str = "lstm", packed: bool = False, raw: bool = False) -> Task:
    """16 features, 3 classes; the (untrained) teacher reads them as a sequence of 4 steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 16, generator=gen)
    y = torch.arange(60) % 3
    torch.manual_seed(0)
    return Task(f"recurrent-{kind}", RecurrentClassifier(kind, packed, raw).eval(), TensorDataset(x[:40], y[:40]),
                TensorDataset(x[40:], y[40:]), 3)


class AttentionClassifier(nn.Module):
    """16 input features read as 2 tokens of 8, one attention layer, a linear head. With ``raw=True`` its forward
    reads the attention's packed ``in_proj_weight`` itself, which the one-Linear-per-projection rewrite removes."""

    def __init__(self, raw: bool = False, **attention: object) -> None:
        super().__init__()
        self.raw = raw
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **attention)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.view(len(x), 2, 8)
        if self.raw:
            seq = torch.nn.functional.linear(seq, self.attn.in_proj_weight[:8])
        return self.head(self.attn(seq, seq, seq)[0].mean(1))


def attention_task(raw: bool = False, add_bias_kv: bool = False) -> Task:
    """The tiny task on 16 features with an (untrained) :class:`AttentionClassifier` teacher."""
    task = make_task(n_features=16)
    torch.manual_seed(0)
    teacher = AttentionClassifier(raw, add_bias_kv=add_bias_kv).eval()
    return Task("attention", teacher, task.train, task.val, 3)


class _PairOfOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.fc(x), None


def tuple_teacher() -> Task:
    """A teacher that returns a tuple, not logits."""
    task = make_task()
    return Task("tuple", _PairOfOutputs(), task.train, task.val, 3)


def wrong_width_teacher() -> Task:
    """A teacher with 3 logits for a task that declares 5 classes."""
    task = make_task()
    return Task("width", task.teacher, task.train, task.val, 5)


class NumpyPairs(torch.utils.data.Dataset):
    """(float64 NumPy array, int) pairs, as many user datasets yield."""

    def __init__(self, data: TensorDataset) -> None:
        self.x, self.y = data.tensors[0].double().numpy(), data.tensors[1].numpy()  # float64, as NumPy makes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def numpy_task() -> Task:
    """The tiny task with datasets of NumPy pairs instead of TensorDatasets."""
    task = make_task()
    return Task("numpy", task.teacher, NumpyPairs(task.train), NumpyPairs(task.val), 3)
