"""Structured pruning of recurrent layers: whole hidden units of a SplitRNN removed, wherever its state is read."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metacompress.learners import (
    SplitRNN,
    channel_groups,
    compress,
    deployable,
    describe_layers,
    export_compressed,
    finetune,
    load_compressed,
    load_task,
    predict_logits,
    shrink,
    size_bytes,
    split_recurrent,
)
from metacompress.learners.meta import SizeModel
from metacompress.spaces import CompressionPolicy

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class Reader(nn.Module):
    """16 features as 4 steps of 4, a recurrent layer (6 units), and a head reading its hidden state in the way
    ``read`` names; ``embed`` puts a Linear before it, ``proj`` gives an LSTM a projection."""

    def __init__(self, kind: str = "lstm", read: str = "last", bidirectional: bool = True, layers: int = 2,
                 embed: bool = False, proj: int = 0) -> None:
        super().__init__()
        self.read, self.lstm = read, kind == "lstm"
        self.embed = nn.Linear(4, 8) if embed else None
        extra = {"proj_size": proj} if proj else {}
        self.rnn = _CELLS[kind](8 if embed else 4, 6, num_layers=layers, batch_first=True,
                                bidirectional=bidirectional, **extra)
        directions = 2 if bidirectional else 1
        width = (proj or 6) * directions
        if read == "stacked":
            self.second = nn.GRU(width, 5, batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(layers * directions, 1, 6), requires_grad=False)
        self.head = nn.Linear({"state": proj or 6, "cell": 6, "stacked": 5, "flatten": 4 * width,
                               "concat": 2 * (proj or 6)}.get(read, width), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.view(-1, 4, 4)
        if self.embed is not None:
            seq = torch.relu(self.embed(seq))
        if self.read == "initial":
            out, _ = self.rnn(seq, self.h0.expand(-1, seq.shape[0], -1).contiguous())
            return self.head(out[:, -1])
        out, state = self.rnn(seq)
        h, c = state if self.lstm else (state, None)
        if self.read == "last":
            return self.head(out[:, -1, :])
        if self.read == "mean":
            return self.head(torch.relu(out).mean(1))
        if self.read == "state":
            return self.head(h[-1])
        if self.read == "cell":
            return self.head(c[-1])
        if self.read == "stacked":
            return self.head(self.second(out)[0][:, -1])
        if self.read == "flatten":
            return self.head(out.flatten(1))
        if self.read == "concat":
            return self.head(torch.cat([h[-2], h[-1]], 1))
        if self.read == "features":
            return self.head(out[:, -1]) + out[:, -1].sum(-1, keepdim=True)
        raise ValueError(self.read)


def _model(**kw) -> nn.Module:
    torch.manual_seed(0)
    return split_recurrent(Reader(**kw))[0].eval()


def _recurrent_group(model: nn.Module, x: torch.Tensor, name: str = "rnn"):
    return next(g for g in channel_groups(model, x) if g.producers[0].startswith(f"{name}.l0"))


def _kept_units(before: SplitRNN, after: SplitRNN) -> list[int]:
    """Which hidden units of ``before`` ``after`` kept (matched by their rows of the first gate block)."""
    first = before.l0.ih.weight[: before.hidden_size]
    return [int((first == row).all(1).nonzero()[0]) for row in after.l0.ih.weight[: after.hidden_size]]


def _silenced(model: nn.Module, readers: dict[str, int], removed: list[int], width: int) -> nn.Module:
    """``model`` with the ``removed`` units made unreadable: their columns zeroed in every reader (``factor`` stacked
    copies of the units each)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, factor in readers.items():
            cols = [j + b * width for b in range(factor) for j in removed]
            out.get_submodule(name).weight[:, cols] = 0
    return out


def _readers(rnn: str, layers: int, directions: int, proj: int, outside: dict[str, int]) -> dict[str, int]:
    cells = [f"{rnn}.l{k}{s}" for k in range(layers) for s in ("", "_reverse")[:directions]]
    inner = {f"{c}.{'hr' if proj else 'hh'}": 1 for c in cells}
    if not proj:
        inner.update({f"{c}.ih": directions for c in cells[directions:]})
    return {**inner, **outside}


@pytest.mark.parametrize(("kind", "read", "bidirectional", "proj", "outside"), [
    ("lstm", "last", True, 0, {"head": 2}),
    ("gru", "last", True, 0, {"head": 2}),
    ("rnn", "mean", False, 0, {"head": 1}),
    ("lstm", "state", True, 0, {"head": 1}),
    ("lstm", "cell", False, 0, {"head": 1}),
    ("lstm", "state", False, 2, {}),  # projected: the hidden units never leave the module
    ("lstm", "last", True, 2, {}),
    ("gru", "stacked", True, 0, {"second.l0.ih": 2}),
])
def test_removing_hidden_units_computes_what_the_teacher_does_with_those_units_unread(
        kind, read, bidirectional, proj, outside):
    model = _model(kind=kind, read=read, bidirectional=bidirectional, proj=proj)
    x = torch.randn(7, 16)
    group = _recurrent_group(model, x)
    directions = 2 if bidirectional else 1
    readers = _readers("rnn", 2, directions, proj, outside)
    assert group.prunable and group.width == 6 and group.gates == model.rnn.gates
    assert dict(group.consumers) == readers
    names = {i.name: i.structured for i in describe_layers(model, x)}
    assert all(names[p] for p in group.producers) and not any(names[n] for n in names if n.endswith(".hr"))
    student = copy.deepcopy(model)
    assert shrink(student, {"rnn.l1.hh": 0.5}, x) == {p: 3 * model.rnn.gates for p in group.producers}
    assert student.rnn.hidden_size == 3 and student.rnn.l1.ih.in_features == (proj or 3) * directions
    removed = sorted(set(range(6)) - set(_kept_units(model.rnn, student.rnn)))
    reference = _silenced(model, readers, removed, 6)
    with torch.no_grad():
        assert torch.allclose(student(x), reference(x), atol=1e-5)
        fused = deployable(student, int8=False)  # the fused kernel with three units per layer
        assert type(fused.rnn) is _CELLS[kind] and fused.rnn.hidden_size == 3
        assert torch.allclose(fused(x), student(x), atol=1e-5)


@pytest.mark.parametrize(("kind", "read"), [
    ("gru", "initial"),  # an initial state of the old width
    ("lstm", "flatten"),  # time steps and units mixed in one feature axis
    ("lstm", "concat"),
    ("gru", "features"),  # a sum over the units
])
def test_hidden_state_read_in_other_ways_keeps_every_unit(kind, read):
    model = _model(kind=kind, read=read)
    x = torch.randn(3, 16)
    assert not _recurrent_group(model, x).prunable
    student = copy.deepcopy(model)
    assert shrink(student, {"rnn.l0.ih": 0.5}, x) == {}
    assert student.rnn.hidden_size == 6


def test_a_linear_before_the_recurrent_layer_loses_channels_with_its_first_layer_inputs():
    model = _model(kind="lstm", embed=True)
    x = torch.randn(5, 16)
    embed = next(g for g in channel_groups(model, x) if g.producers == ["embed"])
    assert embed.prunable and dict(embed.consumers) == {"rnn.l0.ih": 1, "rnn.l0_reverse.ih": 1}
    student = copy.deepcopy(model)
    shrink(student, {"embed": 0.5}, x)
    assert student.embed.out_features == 4 and student.rnn.input_size == 4 and student.rnn.hidden_size == 6
    assert deployable(student, int8=False)(x).shape == (5, 3)


@pytest.mark.parametrize(("kind", "proj"), [("lstm", 0), ("gru", 0), ("lstm", 3)])
def test_sizes_of_structured_recurrent_students_are_exact_and_exports_restore_them(kind, proj, tmp_path):
    model = _model(kind=kind, proj=proj, embed=True)
    x = torch.randn(4, 16)
    names = [i.name for i in describe_layers(model, x)]
    sizes = SizeModel(model, x)
    for prune, bits in ((0.25, 8), (0.5, 4), (0.8, 3)):
        policy = CompressionPolicy.uniform(names, prune, bits, prune_method="structured", act_bits=8)
        student = compress(model, policy, x)
        assert student.rnn.hidden_size == max(proj + 1, round(6 * (1 - prune)))  # more units than projected
        assert size_bytes(student) == sizes.policy_bytes(policy)
    export_compressed(student, tmp_path / "s.mcz", (16,))
    back = load_compressed(tmp_path / "s.mcz", model)
    assert back.rnn.hidden_size == student.rnn.hidden_size
    assert torch.allclose(predict_logits(back, x), predict_logits(student, x), atol=1e-5)


def test_a_structured_recurrent_student_fine_tunes_and_deploys_with_int8_kernels():
    task = load_task({"factory": "plugin_task:recurrent_task", "kwargs": {"kind": "lstm"}})
    example = task.example_input(2)
    names = [i.name for i in describe_layers(task.teacher, example)]
    policy = CompressionPolicy.uniform(names, 0.5, 8, epochs=1, prune_method="structured")
    student = compress(task.teacher, policy, example)
    assert student.rnn.hidden_size == 3 and student.head.in_features == 6
    assert len(finetune(student, task.teacher, task.train, policy, val=task.val)) == 1
    int8 = deployable(student, int8=True)
    assert "quantized.dynamic" in type(int8.rnn).__module__ and int8.rnn.hidden_size == 3
    x = task.val.tensors[0]
    agree = (predict_logits(int8, x).argmax(1) == predict_logits(student, x).argmax(1)).float().mean()
    assert agree >= 0.9


class _Twice(nn.Module):
    """One LSTM and one head applied to both halves of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.view(-1, 2, 2, 4).unbind(1)
        return self.head(self.rnn(a)[0][:, -1]) + self.head(self.rnn(b)[0][:, -1])


def test_a_recurrent_layer_called_twice_is_shrunk_once():
    torch.manual_seed(0)
    model = split_recurrent(_Twice())[0].eval()
    x = torch.randn(5, 16)
    group = _recurrent_group(model, x)
    assert group.prunable and dict(group.consumers) == {"rnn.l0.hh": 1, "head": 1} and len(group.consumers) == 2
    student = copy.deepcopy(model)
    shrink(student, {"rnn.l0.ih": 0.5}, x)
    assert student.head.in_features == 3
    removed = sorted(set(range(6)) - set(_kept_units(model.rnn, student.rnn)))
    with torch.no_grad():
        assert torch.allclose(student(x), _silenced(model, dict(group.consumers), removed, 6)(x), atol=1e-5)
