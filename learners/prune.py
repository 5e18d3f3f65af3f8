"""Pruning: unstructured magnitude masks, and structured channel pruning that physically shrinks the model.

Structured pruning traces the model with :mod:`torch.fx` and groups *coupled* channels: the output channels of a
Linear/Conv layer flow through shape-preserving ops (BatchNorm, activations, pooling, dropout) into the inputs of
the next layers; a residual ``a + b`` couples the channels of both branches, so they are pruned together, and a
depthwise convolution (``groups == in_channels == out_channels``) makes its output channels one group with its
input's (its filter ``c`` reads channel ``c`` alone; other grouped convolutions keep their channels whole). Where the
channels lie is followed too (a conv's on dimension 1, a Linear's on the last one: ``(batch, tokens, features)``):
they pass indexing and means, sums or maxima over the other dimensions (``x.mean((2, 3))``, ``out[:, 0]``) and
transposes and permutes (a conv's output as ``(batch, length, channels)`` for a Linear or an LSTM). A flatten to
``(batch, -1)`` (``nn.Flatten``, ``x.flatten(1)``, ``x.view(x.size(0), -1)``) maps a conv's channel to its block of
``H * W`` input features of the next Linear, a Linear's to its feature in every token. A Linear reading a conv's
length, a conv reading a Linear's tokens, or pooling or BatchNorm over a Linear's tokens would mix channels.
Channels that reach anything else (concatenation, other reshapes, the model output) are left alone; those producers
are reported as not structurally prunable, with the first obstacle met (``ChannelGroup.reason``;
``metacompress layers`` prints them). Modules whose forward is known hold groups of their own, found without tracing
(:func:`block_groups`): the heads of a :class:`~.attention.SplitAttention`, removed whole, and the hidden units of a
Transformer layer's feed-forward block. The hidden units of a :class:`~.recurrent.SplitRNN` (a factory's LSTM, GRU
or RNN) are one group per module, found in the trace: the hidden state leaves the module, so the layers reading it
must be known. Every layer and direction keeps the same number of units (the fused kernel has one ``hidden_size``)
and the same units (a bidirectional output stacks both directions' states); the group is prunable when what leaves
the module reaches Linear layers only, through elementwise activations, indexing and reductions over other
dimensions than the features, and no initial state is passed in. A model that ``torch.fx`` cannot trace (Python
control flow on its inputs, ``len(x)``, ...) has no other prunable group: its other layers are pruned unstructured
only. No group touching a weight that several modules share (:func:`~.quant.tied_layers`) is prunable.
"""

from __future__ import annotations

import logging
import operator
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .attention import SplitAttention
from .quant import tied_layers
from .recurrent import SplitRNN

__all__ = [
    "ChannelGroup", "block_groups", "channel_groups", "feedforward_groups", "head_groups", "magnitude_mask",
    "recurrent_groups", "shrink", "structure_of",
]

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Identity,
    nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# shape-preserving ops that act on the channels at dimension 1 (the others are elementwise)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, *_NORMS,
)
_PASS_FUNCS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.sigmoid, torch.tanh,
    torch.nn.functional.dropout, torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool1d, torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool1d,
    torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.silu, torch.nn.functional.leaky_relu,
}
_MERGE_FUNCS = {operator.add, operator.sub, torch.add, torch.sub, operator.mul, torch.mul}
# what a recurrent module's hidden state may pass through on its way to Linear layers (features on the last dim)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Identity, nn.Dropout,
)
_ELEMENTWISE_FUNCS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.sigmoid, torch.tanh,
    torch.nn.functional.dropout, torch.nn.functional.silu, torch.nn.functional.leaky_relu,
}
_REDUCTIONS = {"mean", "sum", "amax"}
_LOG = logging.getLogger(__name__)
_UNTRACEABLE_SEEN: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models already reported as untraceable


def magnitude_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor | None:
    """0/1 mask keeping the ``1 - ratio`` largest-magnitude weights of one layer (``None`` when ratio is 0)."""
    if ratio <= 0.0:
        return None
    n = weight.numel()
    n_prune = min(int(round(ratio * n)), n - 1)
    if n_prune <= 0:
        return None
    threshold = weight.detach().abs().flatten().kthvalue(n_prune).values
    mask = (weight.detach().abs() > threshold).to(weight.dtype)
    # ties at the threshold: keep exactly n - n_prune weights
    deficit = (n - n_prune) - int(mask.sum())
    if deficit > 0:
        ties = ((weight.detach().abs() == threshold) & (mask == 0)).flatten().nonzero().flatten()[:deficit]
        mask.view(-1)[ties] = 1.0
    return mask


@dataclass
class ChannelGroup:
    """Channels that must be pruned together.

    Attributes:
        producers: Layers whose output channels form the group (all of the same width).
        consumers: ``(layer, factor)`` pairs: layers reading the channels as input, each channel spanning
            ``factor`` consecutive input features (``factor > 1`` after a flatten).
        norms: BatchNorm layers normalizing the channels.
        prunable: False when the channels reach an op that cannot follow a channel removal.
        width: Number of channels in the group.
        unit: Channels are removed in blocks of ``unit`` (an attention head's ``head_dim``; 1 otherwise), at least
            one block kept.
        gates: Each producer has ``gates`` output rows per channel, laid out as ``gates`` blocks of ``width`` rows
            (a recurrent layer's gates; 1 otherwise).
        stacked: A consumer's ``factor`` input features per channel are ``factor`` blocks of ``width`` features
            (the two directions of a bidirectional recurrent output; a Linear's features of each token, flattened)
            instead of ``factor`` consecutive ones (a conv's positions, flattened).
        min_blocks: Blocks always kept (an LSTM with a projection keeps more units than it projects onto).
        reason: Why the group is not prunable (the first obstacle met; empty when it is prunable).
    """

    producers: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    prunable: bool = True
    width: int = 0
    unit: int = 1
    gates: int = 1
    stacked: bool = False
    min_blocks: int = 1
    reason: str = ""

    def refuse(self, reason: str) -> None:
        """Make the group not prunable, keeping the first ``reason`` given."""
        self.prunable = False
        self.reason = self.reason or reason

    def kept(self, ratio: float) -> int:
        """Channels kept when a fraction ``ratio`` of them is removed (whole blocks, at least one)."""
        blocks = self.width // self.unit
        return max(self.min_blocks, int(round(blocks * (1.0 - ratio)))) * self.unit


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer with the rewritten attention and recurrent modules kept whole, as the ``torch.nn``
    modules they replace are (their forwards branch on input shapes, which a symbolic trace cannot follow)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SplitAttention, SplitRNN)) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    gm = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    gm.train(was_training)
    return gm


def _channels(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return None if meta is None or len(meta.shape) < 2 else int(meta.shape[1])


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """``node`` in words, for the reason a group is not prunable: ``BatchNorm1d `bn```, ```cat```, ```linear`` in
    MyLayer `custom``` (an op of a module's own forward), the output."""
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} `{node.target}`"
    what = f"`.{node.target}()`" if node.op == "call_method" else f"`{getattr(node.target, '__name__', node.target)}`"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:  # an op of a module's own forward (a custom layer): the module is what the user knows
        path, cls = list(stack.values())[-1]
        return f"{what} in {getattr(cls, '__name__', cls)} `{path}`"
    return what


def _depthwise(mod: nn.Module) -> bool:
    """A depthwise convolution: one filter per input channel (``groups == in_channels == out_channels``)."""
    return isinstance(mod, (nn.Conv1d, nn.Conv2d)) and 1 < mod.groups == mod.in_channels == mod.out_channels


def _ndim(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else -1


def _spatial(node: fx.Node, mod: nn.Module | None) -> bool:
    """Whether ``node`` (a shape-preserving op) reads dimension 1 as the channels: pooling, BatchNorm."""
    return isinstance(mod, _SPATIAL_MODULES) or (
        node.op == "call_function" and "pool" in getattr(node.target, "__name__", ""))


def _is_flatten(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node`` flattens all but the batch dimension: ``nn.Flatten()``, ``torch.flatten(x, 1)``,
    ``x.flatten(1)``, or a view / reshape to ``(batch, -1)`` (the features left to be inferred)."""
    if node.op == "call_module" and isinstance(modules[node.target], nn.Flatten):
        return modules[node.target].start_dim == 1 and modules[node.target].end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if (node.op == "call_method" and node.target in ("view", "reshape")) or (
            node.op == "call_function" and node.target is torch.reshape):
        source, spec = node.args[0], node.args[1:]
        spec = spec[0] if len(spec) == 1 and isinstance(spec[0], (tuple, list)) else spec
        if len(spec) != 2 or spec[1] != -1:  # a literal feature count would not follow the channels removed
            return False
        shape_in = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
        shape_out = node.meta.get("tensor_meta")
        if shape_in is None or shape_out is None or len(shape_in.shape) < 2:
            return False
        return tuple(shape_out.shape) == (shape_in.shape[0], shape_in.shape[1:].numel())
    return False


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Trace ``model`` and return its groups of coupled output channels (one per distinct channel space); only the
    groups inside known blocks (:func:`block_groups`: attention heads, Transformer feed-forward units) when
    ``torch.fx`` cannot trace it (logged once per model)."""
    blocks = block_groups(model)
    try:
        gm = _trace(model, example_input)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds on user code; none is fatal here
        if model not in _UNTRACEABLE_SEEN:
            _UNTRACEABLE_SEEN.add(model)
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            _LOG.warning("torch.fx cannot trace %s (%s: %s): %s", type(model).__qualname__, type(exc).__name__,
                         first, "only attention heads and feed-forward units can be removed whole" if blocks
                         else "no layer can lose whole output channels")
        why = f"torch.fx cannot trace {type(model).__qualname__} ({type(exc).__name__})"
        inside = {p for g in blocks for p in g.producers}
        return _unshared(model, blocks) + [
            ChannelGroup([n], prunable=False, width=_out_channels(m), reason=why)
            for n, m in model.named_modules() if isinstance(m, _PRODUCERS) and n and n not in inside]
    modules = dict(gm.named_modules())
    rnn_groups = recurrent_groups(model)
    rnn = _RecurrentFlow(rnn_groups, modules)
    uf = _UnionFind()
    space: dict[fx.Node, tuple[str, int]] = {}  # node -> (channel space id, features per channel)
    axis: dict[fx.Node, int] = {}  # node -> the dimension holding its channels (1 or the last)
    consumers: dict[str, list[tuple[str, int]]] = {}
    norms: dict[str, list[str]] = {}
    blocked: dict[str, str] = {}  # channel space -> why it cannot be pruned (the first reason met)
    flattened: dict[str, set[bool]] = {}  # channel space -> how flattens laid it out (True: stacked per token)

    def block(node_in: fx.Node, why: str) -> None:
        if node_in in space:
            blocked.setdefault(space[node_in][0], why)

    # a layer that forward calls more than once reads every call's input with the same columns: its channels and
    # those of what feeds it would have to be cut alike in every call (not followed: neither is cut)
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for node in gm.graph.nodes:
        ins = [a for a in node.all_input_nodes if a in space]
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, SplitRNN) or rnn.reads(node):
            for a in rnn.step(node, mod, ins, space, consumers, axis):  # upstream channels it cannot follow
                block(a, f"they reach {_describe(node, modules)}")
            if node in space:  # a Linear reading a hidden state
                axis[node] = _ndim(node) - 1
            continue
        if isinstance(mod, _PRODUCERS):
            conv = not isinstance(mod, nn.Linear)
            # a depthwise conv's channel c reads its input's channel c alone: the two are removed together
            follows = (_depthwise(mod) and len(ins) == 1 and axis[ins[0]] == 1 and _ndim(ins[0]) >= 3
                       and space[ins[0]][1] == 1 and calls[node.target] == 1)
            for a in ins:  # a Linear reads the last dimension, a conv dimension 1 of a batch
                if follows:
                    continue
                if axis[a] == (1 if conv else _ndim(a) - 1) and (_ndim(a) >= 3 or not conv):
                    consumers.setdefault(space[a][0], []).append((node.target, space[a][1]))
                else:
                    block(a, f"{_describe(node, modules)} reads another dimension than the channels")
            grouped = getattr(mod, "groups", 1) != 1
            space[node] = (node.target, 1)
            axis[node] = 1 if conv else _ndim(node) - 1
            if follows:
                uf.union(node.target, space[ins[0]][0])
            if calls[node.target] > 1:
                blocked.setdefault(node.target, "a layer forward calls more than once")
                for a in ins:
                    block(a, f"read by `{node.target}`, which forward calls more than once")
            if grouped and not follows:
                why = ("a depthwise convolution whose input channels cannot be followed" if _depthwise(mod)
                       else "a grouped convolution")
                blocked.setdefault(node.target, why)
                for a in ins:
                    block(a, f"read by the grouped convolution `{node.target}`")
        elif len(ins) == 1 and len(node.all_input_nodes) == 1 and (
            isinstance(mod, _PASS_MODULES + _NORMS) or (node.op == "call_function" and node.target in _PASS_FUNCS)
            or (node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh", "contiguous"))
        ):
            if _spatial(node, mod) and (axis[ins[0]] != 1 or _ndim(ins[0]) < (2 if isinstance(mod, _NORMS) else 3)):
                what = "normalizes" if isinstance(mod, _NORMS) else "pools"
                block(ins[0], f"{_describe(node, modules)} {what} another dimension than the channels")
                continue
            if isinstance(mod, _NORMS) and space[ins[0]][1] != 1:
                block(ins[0], f"{_describe(node, modules)} normalizes each feature of a flattened channel apart")
                continue
            space[node], axis[node] = space[ins[0]], axis[ins[0]]
            if isinstance(mod, _NORMS):
                norms.setdefault(space[ins[0]][0], []).append(node.target)
        elif len(ins) == 1 and _is_flatten(node, modules):
            sid, factor = space[ins[0]]
            shape, c_out = ins[0].meta["tensor_meta"].shape, _channels(node)
            per_token = axis[ins[0]] == len(shape) - 1 >= 2  # (batch, tokens, features): token t's at t * width
            width = int(shape[-1] if per_token else shape[1])
            if c_out and c_out % width == 0 and factor == 1 and (axis[ins[0]] == 1 or per_token):
                space[node], axis[node] = (sid, c_out // width), 1
                flattened.setdefault(sid, set()).add(per_token)
            else:
                blocked.setdefault(sid, f"{_describe(node, modules)} flattens them in a layout removal cannot follow")
        elif node.op == "call_function" and node.target in _MERGE_FUNCS and len(ins) == 2 and all(
            _channels(a) == _channels(node) for a in ins
        ) and ins[0].meta.get("tensor_meta").shape == ins[1].meta.get("tensor_meta").shape:
            if space[ins[0]][1] != 1 or space[ins[1]][1] != 1 or axis[ins[0]] != axis[ins[1]]:
                for a in ins:
                    block(a, f"{_describe(node, modules)} combines channels laid out differently")
            uf.union(space[ins[0]][0], space[ins[1]][0])
            space[node], axis[node] = space[ins[0]], axis[ins[0]]
        elif (node.op == "call_method" and node.target in ("size", "dim")) or (
                node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim")):
            pass  # reads the shape only (``x.view(x.size(0), -1)``)
        elif len(ins) == 1 and len(node.all_input_nodes) == 1 and (
                moved := _axis_after(node, ins[0], axis[ins[0]])) is not None:  # x.mean((2, 3)), x.transpose(1, 2)
            space[node], axis[node] = space[ins[0]], moved
        else:
            merge = node.op == "call_function" and node.target in _MERGE_FUNCS
            for a in ins:
                block(a, f"{_describe(node, modules)} combines them with a tensor of another shape or group"
                      if merge else f"they reach {_describe(node, modules)}")
    inside = {f"{name}.{sub}" for name in rnn_groups for sub, _ in modules[name].named_modules() if sub}
    own = inside | {p for g in blocks for p in g.producers}  # these have groups of their own, not one per layer
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    for name, m in modules.items():  # layers inside a module the trace keeps whole (its forward unseen)
        if isinstance(m, _PRODUCERS) and name not in called:
            outer = next((c for c in called if name.startswith(f"{c}.")), None)
            if outer is not None:
                blocked.setdefault(name, f"inside {type(modules[outer]).__name__} `{outer}`, traced as a whole")
    groups = [g for g in _collect(modules, uf, consumers, norms, blocked) if not own.intersection(g.producers)]
    for g in groups:
        layouts = set().union(*(flattened.get(p, set()) for p in g.producers))
        g.stacked = True in layouts
        if len(layouts) > 1:  # flattened both ways (cannot happen through the ops followed; kept whole if it did)
            g.refuse("flattened in two layouts")
    groups += blocks + list(rnn_groups.values())
    for g in groups:  # a layer called more than once reads the channels once (twice differently: left alone)
        g.consumers = list(dict.fromkeys(g.consumers))
        if len({c for c, _ in g.consumers}) < len(g.consumers):
            g.refuse("a layer reads them twice, in different layouts")
    return _unshared(model, groups)


class _RecurrentFlow:
    """Follows the hidden state of every :class:`~.recurrent.SplitRNN` through a traced graph (:func:`channel_groups`):
    which layers read it (the group's outside consumers) and whether anything else does (not prunable then).

    A value is ``(module, kind, factor)``: the module's result tuple (``"result"``), an LSTM's ``(h_n, c_n)``
    (``"state"``), or a tensor whose last dimension is ``factor`` stacked copies of the hidden units (``"tensor"``).
    """

    def __init__(self, groups: Mapping[str, ChannelGroup], modules: Mapping[str, nn.Module]) -> None:
        self.groups, self.modules = groups, modules
        self.values: dict[fx.Node, tuple[str, str, int]] = {}

    def reads(self, node: fx.Node) -> bool:
        return any(a in self.values for a in node.all_input_nodes)

    def step(self, node: fx.Node, mod: nn.Module | None, ins: list[fx.Node], space: dict, consumers: dict,
             axis: dict) -> list:
        """Handle ``node`` (a SplitRNN call, or a node reading one's hidden state); returns the upstream inputs whose
        channels it cannot follow."""
        if isinstance(mod, SplitRNN):
            if len(node.all_input_nodes) != 1:  # an initial state would change width too
                self.groups[node.target].refuse("an initial state is passed in")
            self.values[node] = (node.target, "result", 0)
            first = [(f"{node.target}.l0{s}.ih", 1) for s in ("", "_reverse")[: mod.directions]]
            upstream = node.all_input_nodes[0] if len(node.all_input_nodes) == 1 else None
            if upstream in self.values:  # one recurrent module reading another's output
                name, kind, factor = self.values[upstream]
                if kind == "tensor":
                    self.groups[name].consumers.extend((c, factor) for c, _ in first)
                else:
                    self.groups[name].refuse(f"`{node.target}` reads its state")
                return ins
            if upstream in ins and space[upstream][1] == 1 and _ndim(upstream) == 3 and axis[upstream] == 2:
                # (batch, time, features) holding the channels of a Linear, or of a conv transposed
                consumers.setdefault(space[upstream][0], []).extend(first)
                return []
            for a in node.all_input_nodes:
                if a in self.values:
                    self.groups[self.values[a][0]].refuse(f"its state reaches `{node.target}` with other inputs")
            return ins
        source = next(a for a in node.all_input_nodes if a in self.values)
        name, kind, factor = self.values[source]
        group, rnn = self.groups[name], self.modules[name]
        if len(node.all_input_nodes) != 1:
            group.refuse(f"its state reaches {_describe(node, self.modules)} with other inputs")
            return ins
        if kind in ("result", "state"):
            index = node.args[1] if node.op == "call_function" and node.target is operator.getitem else None
            if index not in (0, 1):
                group.refuse(f"its result is read by {_describe(node, self.modules)}")
            elif kind == "result" and index == 1 and rnn.mode == "LSTM":
                self.values[node] = (name, "state", 0)
            elif not (rnn.proj_size and (kind, index) in (("result", 0), ("state", 0))):  # projected: not hidden
                self.values[node] = (name, "tensor", rnn.directions if (kind, index) == ("result", 0) else 1)
        elif isinstance(mod, nn.Linear):
            group.consumers.append((node.target, factor))
            space[node] = (node.target, 1)
        elif (isinstance(mod, _ELEMENTWISE_MODULES) or (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCS)
              or (node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh", "contiguous"))
              or _keeps_last_dim(node, source)):
            self.values[node] = self.values[source]
        else:
            group.refuse(f"its state reaches {_describe(node, self.modules)}")
        return []


def _axis_after(node: fx.Node, source: fx.Node, axis: int) -> int | None:
    """Where the channels of ``source`` (on its dimension ``axis``) lie in ``node``, when ``node`` only indexes or
    reduces ``source`` over other dimensions (``out[:, -1]``, ``h_n[-1]`` with the channels last; ``x.mean((2, 3))``,
    ``out.sum(1)``) or moves its dimensions (``x.transpose(1, 2)``, ``x.permute(0, 2, 1)``); ``None`` when it does
    anything else."""
    ndim = _ndim(source)
    if ndim < 1:
        return None
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if name in ("transpose", "permute") and (node.op == "call_method" or getattr(torch, name, None) is node.target):
        dims = node.args[1:]
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        if node.kwargs or not dims or not all(isinstance(d, int) for d in dims):
            return None
        dims = tuple(d % ndim for d in dims)
        if name == "transpose":
            return None if len(dims) != 2 else dims[1] if axis == dims[0] else dims[0] if axis == dims[1] else axis
        return dims.index(axis) if sorted(dims) == list(range(ndim)) else None
    if node.op == "call_function" and node.target is operator.getitem:
        items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        while items and items[-1] == slice(None):  # out[:, -1, :] keeps the last dimension whole
            items = items[:-1]
        plain = all(isinstance(i, int) or (isinstance(i, slice) and all(
            v is None or isinstance(v, int) for v in (i.start, i.stop, i.step))) for i in items)
        return _ndim(node) - 1 if plain and len(items) < ndim and axis == ndim - 1 else None
    reduction = (node.op == "call_method" and node.target in _REDUCTIONS) or (
        node.op == "call_function" and getattr(node.target, "__name__", None) in _REDUCTIONS
        and getattr(torch, node.target.__name__, None) is node.target)
    if not reduction:
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if not all(isinstance(d, int) for d in dims) or axis in {d % ndim for d in dims}:
        return None
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return axis if keepdim else axis - sum(d % ndim < axis for d in dims)


def _keeps_last_dim(node: fx.Node, source: fx.Node) -> bool:
    """Whether ``node`` indexes, reduces or moves ``source``'s dimensions, its last one staying last."""
    return _axis_after(node, source, _ndim(source) - 1) == _ndim(node) - 1


def _unshared(model: nn.Module, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """``groups``, those touching a weight that several modules share made not prunable (slicing one holder would
    cut the weight out from under the others)."""
    followers, excluded = tied_layers(model)
    shared = {*followers, *followers.values(), *excluded}
    for g in groups:
        if shared.intersection(g.producers) or shared.intersection(c for c, _ in g.consumers):
            g.refuse("a weight shared with another module (tied weights)")
    return groups


def recurrent_groups(model: nn.Module) -> dict[str, ChannelGroup]:
    """The hidden units of every :class:`~.recurrent.SplitRNN` of ``model``, keyed by module name: removing a unit
    removes its row in every gate block of each layer's ``ih`` and ``hh`` (and their biases), and its columns in
    ``hh`` (``hr`` when the LSTM projects its output: it keeps more units than ``proj_size``) and in the next layer's
    ``ih``. The layers reading the module's
    output are not listed: :func:`channel_groups` finds them in the trace (and whether the group stays prunable)."""
    groups = {}
    for name, mod in model.named_modules():
        if name and isinstance(mod, SplitRNN):
            cells = [f"{name}.l{k}{s}" for k in range(mod.num_layers) for s in ("", "_reverse")[: mod.directions]]
            inner = [(f"{c}.{'hr' if mod.proj_size else 'hh'}", 1) for c in cells]
            if not mod.proj_size:  # the next layer reads both directions' hidden states, stacked
                inner += [(c, mod.directions) for c in (f"{x}.ih" for x in cells[mod.directions:])]
            groups[name] = ChannelGroup(producers=[f"{c}.{w}" for c in cells for w in ("ih", "hh")], consumers=inner,
                                        prunable=mod.hidden_size > mod.proj_size + 1, width=mod.hidden_size,
                                        gates=mod.gates, stacked=True, min_blocks=mod.proj_size + 1,
                                        reason="" if mod.hidden_size > mod.proj_size + 1 else
                                        "an LSTM with no more units than one over its projection")
    return groups


def block_groups(model: nn.Module) -> list[ChannelGroup]:
    """The channel groups inside modules whose forward is known, found without a trace: the heads of every
    :class:`~.attention.SplitAttention` (:func:`head_groups`) and the hidden units of every Transformer layer's
    feed-forward block (:func:`feedforward_groups`)."""
    return head_groups(model) + feedforward_groups(model)


def feedforward_groups(model: nn.Module) -> list[ChannelGroup]:
    """One group per ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``: the hidden units of its
    feed-forward block ``linear2(dropout(activation(linear1(x))))``. Removing a unit removes a row (and bias) of
    ``linear1`` and a column of ``linear2``; prunable when the activation acts elementwise (the built-in ReLU/GELU,
    or one this module knows)."""
    groups = []
    for name, mod in model.named_modules():
        if type(mod) in (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer):
            act = mod.activation
            elementwise = getattr(mod, "activation_relu_or_gelu", 0) in (1, 2) or isinstance(act, _PASS_MODULES) \
                or act in _PASS_FUNCS
            prefix = f"{name}." if name else ""
            groups.append(ChannelGroup(producers=[f"{prefix}linear1"], consumers=[(f"{prefix}linear2", 1)],
                                       prunable=elementwise, width=mod.linear1.out_features,
                                       reason="" if elementwise else "a feed-forward activation not elementwise"))
    return groups


def head_groups(model: nn.Module) -> list[ChannelGroup]:
    """One group per :class:`~.attention.SplitAttention` of ``model``: its heads. Removing a head removes its
    ``head_dim`` output channels from ``q_proj``, ``k_proj`` and ``v_proj`` and the matching input columns of
    ``out_proj``; nothing outside the module sees them, so no trace is needed. An attention with one head has
    nothing to remove."""
    groups = []
    for name, mod in model.named_modules():
        if isinstance(mod, SplitAttention):
            prefix = f"{name}." if name else ""
            groups.append(ChannelGroup(
                producers=[f"{prefix}{p}_proj" for p in "qkv"], consumers=[(f"{prefix}out_proj", 1)],
                prunable=mod.num_heads > 1, width=mod.num_heads * mod.head_dim, unit=mod.head_dim,
                reason="" if mod.num_heads > 1 else "a single attention head"))
    return groups


def _collect(modules, uf, consumers, norms, blocked) -> list[ChannelGroup]:
    groups: dict[str, ChannelGroup] = {}
    producers = [n for n, m in modules.items() if isinstance(m, _PRODUCERS) and n]
    for name in producers:
        root = uf.find(name)
        g = groups.setdefault(root, ChannelGroup())
        g.producers.append(name)
        g.consumers.extend(consumers.get(name, []))
        g.norms.extend(norms.get(name, []))
        if name in blocked:
            g.refuse(blocked[name])
    for g in groups.values():
        g.width = _out_channels(modules[g.producers[0]])
        if not g.consumers:
            g.refuse("no layer reads them")
    return list(groups.values())


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _importance(model_modules: Mapping[str, nn.Module], group: ChannelGroup) -> torch.Tensor:
    score = None
    for name in group.producers:
        w = model_modules[name].weight.detach()
        s = w.abs().flatten(1).sum(dim=1).view(group.gates, -1).sum(0)  # a unit's rows in every gate block
        s = s / s.sum().clamp_min(1e-12)
        score = s if score is None else score + s
    return score


def _slice_param(p: torch.nn.Parameter | torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return p.detach().index_select(dim, index.to(p.device)).clone()


def _blocks(keep: torch.Tensor, copies: int, width: int) -> torch.Tensor:
    """The indices of ``keep`` in each of ``copies`` consecutive blocks of ``width``."""
    return (torch.arange(copies)[:, None] * width + keep[None, :]).flatten()


def _shrink_group(mods: Mapping[str, nn.Module], group: ChannelGroup, keep: torch.Tensor) -> None:
    rows = _blocks(keep, group.gates, group.width)
    for name in group.producers:
        m = mods[name]
        m.weight = nn.Parameter(_slice_param(m.weight, rows, 0))
        if m.bias is not None:
            m.bias = nn.Parameter(_slice_param(m.bias, rows, 0))
        if getattr(m, "weight_mask", None) is not None:
            m.weight_mask = _slice_param(m.weight_mask, rows, 0)
        if isinstance(m, nn.Linear):
            m.out_features = len(rows)
        else:
            if _depthwise(m):  # its filter c reads input channel c, removed with it
                m.in_channels = m.groups = len(keep)
            m.out_channels = len(keep)
    for name in group.norms:
        bn = mods[name]
        for attr in ("weight", "bias"):
            if getattr(bn, attr) is not None:
                setattr(bn, attr, nn.Parameter(_slice_param(getattr(bn, attr), keep, 0)))
        bn.running_mean = _slice_param(bn.running_mean, keep, 0)
        bn.running_var = _slice_param(bn.running_var, keep, 0)
        bn.num_features = len(keep)
    for name, factor in group.consumers:
        m = mods[name]
        if group.stacked:
            idx = _blocks(keep, factor, group.width)
        else:
            idx = (keep[:, None] * factor + torch.arange(factor)[None, :]).flatten() if factor > 1 else keep
        m.weight = nn.Parameter(_slice_param(m.weight, idx, 1))
        if getattr(m, "weight_mask", None) is not None:
            m.weight_mask = _slice_param(m.weight_mask, idx, 1)
        if isinstance(m, nn.Linear):
            m.in_features = len(idx)
        else:
            m.in_channels = len(idx)


def shrink(
    model: nn.Module,
    ratios: Mapping[str, float] | None,
    example_input: torch.Tensor,
    *,
    widths: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Remove the least important output channels of each prunable group, in place.

    Args:
        model: The model to shrink (modified in place).
        ratios: Fraction of channels to remove, keyed by producer layer name; a group takes the largest ratio
            among its producers. Layers of groups that cannot be pruned are ignored.
        example_input: One input batch, used to trace shapes.
        widths: Instead of ratios, the exact number of channels to keep per producer (used when loading an
            export: which channels is irrelevant there, the weights are overwritten).

    Returns:
        The kept width of every shrunk producer layer (``structure_of`` for the export manifest).
    """
    mods = dict(model.named_modules())
    kept: dict[str, int] = {}
    if widths is not None:  # only the layers that lost channels need their couplings: known blocks need no trace
        narrower = {n for n, w in structure_of(model).items() if widths.get(n, w) != w}
        blocks = _unshared(model, block_groups(model))
        untraced = narrower <= {p for g in blocks for p in g.producers}
        groups = blocks if untraced else channel_groups(model, example_input)
    else:
        groups = channel_groups(model, example_input)
    for group in groups:
        if not group.prunable:
            continue
        if widths is not None:
            n_keep = next((widths[p] // group.gates for p in group.producers if p in widths), group.width)
            keep = torch.arange(n_keep)
        else:
            n_keep = group.kept(max((ratios or {}).get(p, 0.0) for p in group.producers))
            if n_keep >= group.width:
                continue
            blocks = _importance(mods, group).view(-1, group.unit).sum(1)  # whole heads when unit > 1
            chosen = torch.topk(blocks, n_keep // group.unit).indices.sort().values
            keep = (chosen[:, None] * group.unit + torch.arange(group.unit)).flatten()
        if n_keep < group.width:
            _shrink_group(mods, group, keep)
            kept.update({p: n_keep * group.gates for p in group.producers})
    for mod in model.modules():  # an attention that lost heads computes with fewer, a recurrent layer with fewer units
        if isinstance(mod, SplitAttention):
            mod.num_heads = mod.q_proj.out_features // mod.head_dim
        elif isinstance(mod, SplitRNN):
            mod.hidden_size = mod.l0.ih.out_features // mod.gates
            mod.input_size = mod.l0.ih.in_features
    return kept


def structure_of(model: nn.Module) -> dict[str, int]:
    """Output width of every Linear/Conv layer of ``model``."""
    return {n: _out_channels(m) for n, m in model.named_modules() if isinstance(m, _PRODUCERS)}
