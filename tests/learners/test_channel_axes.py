"""Structured pruning follows where the channels lie: a conv's on dimension 1, a Linear's on the last one.

Removing a channel must change the model exactly as if the layers reading it ignored it; a layer or op that reads
another dimension (a Linear over a conv's length, BatchNorm over a Linear's tokens...) would mix channels, so the
group stays whole there, and reductions over the other dimensions (global average pooling written as
``x.mean((2, 3))``, ``out[:, 0]``) let them through.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metacompress.learners import (
    channel_groups,
    split_recurrent,
    structure_report,
    compress,
    describe_layers,
    export_compressed,
    load_compressed,
    predict_logits,
    shrink,
    size_bytes,
)
from metacompress.learners.meta import SizeModel
from metacompress.spaces import CompressionPolicy


class ConvMeanHead(nn.Module):
    """Global average pooling written as a mean, then the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.bn1(self.conv1(x)))).mean((2, 3)))


class ConvKeepdimMax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 10, 3, padding=1)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        return self.head(torch.flatten(self.conv(x).amax(-1, keepdim=True), 1))


class ConvFlattened(nn.Module):
    """A conv's channels flattened (``how``: ``x.flatten(1)``, ``x.view(x.size(0), -1)``, ``x.reshape(-1, 40)``,
    which names a width the channels removed would change): channel ``c`` is the block of its 4 positions."""

    def __init__(self, how: str = "flatten") -> None:
        super().__init__()
        self.how = how
        self.conv, self.head = nn.Conv1d(3, 10, 3, padding=1), nn.Linear(40, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if self.how == "view":
            return self.head(h.view(h.size(0), -1))
        if self.how == "reshape":
            return self.head(torch.reshape(h, (h.shape[0], -1)))
        return self.head(h.reshape(-1, 40) if self.how == "fixed" else h.flatten(1))


class Tokens(nn.Module):
    """A Linear over each token, then the tokens' mean (``read="mean"``) or the first token (``read="first"``)."""

    def __init__(self, read: str) -> None:
        super().__init__()
        self.read = read
        self.embed = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = nn.functional.gelu(self.embed(x))
        return self.head(h.mean(1) if self.read == "mean" else h[:, 0])


class ConvThenPerPosition(nn.Module):
    """A conv's output transposed to ``(batch, length, channels)`` and a Linear per position (a TCN's head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv1d(3, 10, 3, padding=1), nn.Linear(10, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.mix(torch.relu(self.conv(x)).transpose(1, 2)).mean(1))


class TokensThenConv(nn.Module):
    """A Linear over each token, permuted to ``(batch, features, tokens)`` for a Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.conv, self.head = nn.Linear(6, 12), nn.Conv1d(12, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.conv(self.embed(x).permute(0, 2, 1)).amax(-1))


class ConvThenLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.rnn = nn.Conv1d(3, 10, 3, padding=1), nn.LSTM(10, 8, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.rnn(torch.relu(self.conv(x)).transpose(1, 2))[0][:, -1])


class TokensFlattened(nn.Module):
    """Token features flattened: feature ``c`` of token ``t`` at ``t * 12 + c`` (a conv's channel ``c`` would be the
    block ``c * length ...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(6, 12), nn.Linear(5 * 12, 3)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.embed(x)), 1))


class LinearOverLength(nn.Module):
    """A Linear reading a conv's length (its input features are positions, not the conv's channels; its own outputs
    are, per conv channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv1d(6, 8, 3, padding=1), nn.Linear(5, 4), nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.mix(self.conv(x.transpose(1, 2))).flatten(1))


class TokensNormalizedPerToken(nn.Module):
    """BatchNorm1d over a Linear's (batch, tokens, features) output normalizes the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.bn, self.head = nn.Linear(6, 12), nn.BatchNorm1d(5), nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.bn(self.embed(x)).mean(1))


class TokensPooledOverFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pool, self.head = nn.Linear(6, 12), nn.AdaptiveAvgPool1d(4), nn.Linear(20, 3)

    def forward(self, x):
        return self.head(self.pool(self.embed(x)).flatten(1))


class ConvOverTokens(nn.Module):
    """A Conv1d reading a Linear's (batch, tokens, features) output: the tokens are its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.conv, self.head = nn.Linear(6, 12), nn.Conv1d(5, 4, 3, padding=1), nn.Linear(48, 3)

    def forward(self, x):
        return self.head(self.conv(self.embed(x)).flatten(1))


def _model(cls, *args) -> nn.Module:
    torch.manual_seed(0)
    model = split_recurrent(cls(*args))[0]  # an LSTM as its layers, as a search sees it
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that make the channels differ
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def _removed(before: nn.Module, after: nn.Module) -> list[int]:
    """The output channels of ``before`` that ``after`` (its shrunk copy) no longer has."""
    rows = before.weight.flatten(1)
    kept = {int((rows == row).all(1).nonzero()[0]) for row in after.weight.flatten(1)}
    return sorted(set(range(len(rows))) - kept)


@pytest.mark.parametrize(("cls", "args", "x", "producer", "readers"), [
    (ConvMeanHead, (), torch.randn(4, 1, 6, 6), "conv2", {"head": 1}),
    (ConvMeanHead, (), torch.randn(4, 1, 6, 6), "conv1", {"conv2": 1}),
    (ConvKeepdimMax, (), torch.randn(4, 3, 9), "conv", {"head": 1}),
    (ConvFlattened, ("flatten",), torch.randn(4, 3, 4), "conv", {"head": 4}),
    (ConvFlattened, ("view",), torch.randn(4, 3, 4), "conv", {"head": 4}),
    (ConvFlattened, ("reshape",), torch.randn(4, 3, 4), "conv", {"head": 4}),
    (Tokens, ("mean",), torch.randn(4, 5, 6), "embed", {"head": 1}),
    (Tokens, ("first",), torch.randn(4, 5, 6), "embed", {"head": 1}),
    (TokensFlattened, (), torch.randn(4, 5, 6), "embed", {"head": 5}),
    (LinearOverLength, (), torch.randn(4, 5, 6), "mix", {"head": 8}),  # its features of each of 8 conv channels
    (ConvOverTokens, (), torch.randn(4, 5, 6), "conv", {"head": 12}),
    (ConvThenPerPosition, (), torch.randn(4, 3, 7), "conv", {"mix": 1}),
    (ConvThenPerPosition, (), torch.randn(4, 3, 7), "mix", {"head": 1}),
    (TokensThenConv, (), torch.randn(4, 5, 6), "embed", {"conv": 1}),
    (ConvThenLSTM, (), torch.randn(4, 3, 7), "conv", {"rnn.l0.ih": 1}),
])
def test_channels_pass_reductions_and_indexing_and_removing_them_is_exact(cls, args, x, producer, readers):
    model = _model(cls, *args)
    group = next(g for g in channel_groups(model, x) if producer in g.producers)
    assert group.prunable and dict(group.consumers) == readers
    student = copy.deepcopy(model)
    kept = shrink(student, {producer: 0.5}, x)
    assert kept == {producer: group.width // 2}
    removed = _removed(model.get_submodule(producer), student.get_submodule(producer))
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        for name, copies in readers.items():  # a flattened conv channel is a block; a token's features repeat
            cols = ([j + t * group.width for t in range(copies) for j in removed] if group.stacked
                    else [j * copies + k for j in removed for k in range(copies)])
            silenced.get_submodule(name).weight[:, cols] = 0
    assert torch.allclose(student(x), silenced(x), atol=1e-5)
    assert not torch.allclose(student(x), model(x), atol=1e-3)  # the channels did matter


@pytest.mark.parametrize(("cls", "x", "producer", "reason"), [
    (lambda: ConvFlattened("fixed"), torch.randn(4, 3, 4), "conv", "they reach `.reshape()`"),
    (LinearOverLength, torch.randn(4, 5, 6), "conv", "Linear `mix` reads another dimension than the channels"),
    (TokensNormalizedPerToken, torch.randn(4, 5, 6), "embed",
     "BatchNorm1d `bn` normalizes another dimension than the channels"),
    (TokensPooledOverFeatures, torch.randn(4, 5, 6), "embed",
     "AdaptiveAvgPool1d `pool` pools another dimension than the channels"),
    (ConvOverTokens, torch.randn(4, 5, 6), "embed", "Conv1d `conv` reads another dimension than the channels"),
])
def test_a_layer_or_op_reading_another_dimension_keeps_the_channels_whole(cls, x, producer, reason):
    model = _model(cls)
    group = next(g for g in channel_groups(model, x) if producer in g.producers)
    assert not group.prunable and group.reason == reason
    student = copy.deepcopy(model)
    assert shrink(student, {producer: 0.5}, x) == {}
    assert torch.equal(student(x), model(x))


@pytest.mark.parametrize("cls", [ConvFlattened, TokensFlattened, LinearOverLength, ConvOverTokens])
def test_sizes_are_predicted_exactly_and_exports_load_back_whatever_the_layout(cls, tmp_path):
    model = _model(cls)
    x = torch.randn(4, *((3, 4) if cls is ConvFlattened else (5, 6)))
    assert _structured_round_trip(model, x, tmp_path) < size_bytes(model) / 4


def _structured_round_trip(model: nn.Module, x: torch.Tensor, folder) -> int:
    """Compress ``model`` structured (half of every layer's outputs, 4 bits): its size is predicted exactly and its
    packed export loads back to the same logits. Returns the size."""
    names = [i.name for i in describe_layers(model, x)]
    policy = CompressionPolicy.uniform(names, 0.5, 4, prune_method="structured")
    student = compress(model, policy, x)
    assert size_bytes(student) == SizeModel(model, x).policy_bytes(policy)
    export_compressed(student, folder / "s.mcz", tuple(x.shape[1:]))
    back = load_compressed(folder / "s.mcz", model)
    assert torch.allclose(predict_logits(back, x), predict_logits(student, x), atol=1e-5)
    return size_bytes(student)


class Mixed(nn.Module):
    """Token ids through an embedding and an LSTM, a head on the mean over time."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(10, 6), nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0].mean(1))


def test_the_structure_report_says_what_each_layer_loses_with_which_others_or_why_not():
    model = _model(Mixed)
    report = {r.name: r for r in structure_report(model, torch.randint(0, 10, (4, 5)))}
    assert list(report) == ["emb", "rnn.l0.ih", "rnn.l0.hh", "head"]
    assert report["rnn.l0.ih"].structured and report["rnn.l0.ih"].removes == "hidden units"
    assert report["rnn.l0.ih"].coupled == ("rnn.l0.hh",) and report["rnn.l0.ih"].reason == ""
    assert not report["emb"].structured and report["emb"].reason.startswith("an embedding table")
    assert not report["head"].structured and report["head"].reason == "they reach the model's output"
    conv = {r.name: r for r in structure_report(_model(ConvMeanHead), torch.randn(2, 1, 6, 6))}
    assert [(r.name, r.structured, r.removes) for r in conv.values()] == [
        ("conv1", True, "output channels"), ("conv2", True, "output channels"), ("head", False, "")]


class DepthwiseSeparable(nn.Module):
    """MobileNet's block twice: a depthwise conv's channel c reads its input's channel c alone, so the channels of
    the layer before it and its own are one group (``stem`` with ``dw``, ``pw`` with ``dw2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw, self.bn2 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.dw2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.mult = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # two filters per channel: not followed
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.dw(torch.relu(self.bn0(self.stem(x))))))
        return self.head(self.mult(self.dw2(torch.relu(self.bn2(self.pw(x))))).mean((2, 3)))


def test_a_depthwise_conv_loses_the_channels_of_the_layer_before_it_and_the_result_is_exact(tmp_path):
    model, x = _model(DepthwiseSeparable), torch.randn(4, 1, 6, 6)
    groups = {g.producers[0]: g for g in channel_groups(model, x)}
    assert groups["stem"].producers == ["stem", "dw"] and groups["stem"].prunable
    assert groups["stem"].consumers == [("pw", 1)] and groups["stem"].norms == ["bn0", "bn1"]
    assert groups["pw"].producers == ["pw", "dw2"] and not groups["pw"].prunable  # dw2 feeds the 2-per-channel conv
    assert groups["pw"].reason == "read by the grouped convolution `mult`"
    student = copy.deepcopy(model)
    assert shrink(student, {"dw": 0.5}, x) == {"stem": 4, "dw": 4}  # the group takes its producers' largest ratio
    assert (student.dw.in_channels, student.dw.groups, student.pw.in_channels) == (4, 4, 4)
    removed = _removed(model.stem, student.stem)
    assert removed == _removed(model.dw, student.dw)  # the same channels, in both layers
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.pw.weight[:, removed] = 0
    assert torch.allclose(student(x), silenced(x), atol=1e-5)
    assert not torch.allclose(student(x), model(x), atol=1e-3)
    report = {r.name: r for r in structure_report(model, x)}
    assert report["dw"].structured and report["dw"].coupled == ("stem",)
    _structured_round_trip(model, x, tmp_path)


class OwnLinear(nn.Module):
    """A layer of the user's own: its forward calls ``F.linear`` on its own parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        return nn.functional.linear(x, self.w)


class WithOwnLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.custom, self.head = nn.Linear(6, 8), OwnLinear(), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.custom(torch.relu(self.fc(x)))))


def test_channels_stopped_inside_a_custom_layer_name_the_layer_not_only_the_function_it_calls():
    report = {r.name: r for r in structure_report(_model(WithOwnLayer), torch.randn(2, 6))}
    assert report["fc"].reason == "they reach `linear` in OwnLinear `custom`"


def test_the_pruned_share_counts_what_each_layer_lost_inputs_and_group_ratios_included():
    from metacompress.learners import pruned_share

    model, x = _model(ConvMeanHead), torch.randn(2, 1, 6, 6)
    names = [i.name for i in describe_layers(model, x)]  # conv1, conv2, head
    policy = CompressionPolicy.from_dict({"prune_method": "structured", "layers.conv1.prune": 0.5,
                                          "layers.conv2.prune": 0.25, "layers.head.prune": 0.9}, names)
    lost = pruned_share(model, policy, x)
    assert lost["conv1"] == 0.5  # half its outputs
    assert lost["conv2"] == pytest.approx(1 - (9 / 12) * (4 / 8))  # a quarter of its outputs, half of its inputs
    assert lost["head"] == pytest.approx(0.25)  # it cannot lose outputs, but it reads conv2's 9 of 12
    flat = CompressionPolicy.from_dict({"layers.conv1.prune": 0.5, "layers.conv2.prune": 0.25}, names)
    assert pruned_share(model, flat, x) == {"conv1": pytest.approx(0.5, abs=1 / 72), "conv2": pytest.approx(0.25,
                                            abs=1 / 864), "head": 0.0}
