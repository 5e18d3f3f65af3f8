"""``compress(teacher, policy)``: the student a trial trains — pruned, shrunk and quantization-aware."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from metacompress.spaces import CompressionPolicy, LayerInfo, invalid_value

from .prune import channel_groups, magnitude_mask, shrink
from .quant import compressible, tied_layers, to_quantized
from .recurrent import SplitRNN

__all__ = ["LayerStructure", "compress", "compressible_layers", "describe_layers", "pruned_share",
           "structure_report", "unsearched_weights"]

_KINDS = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Embedding: "embedding"}


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear / Conv1d / Conv2d / Embedding layers of ``model`` by module name (attention projections are Linear
    once :func:`~.attention.split_attention` has run; an Embedding with ``max_norm`` is left out).

    Tied weights (:func:`~.quant.tied_layers`): of layers sharing one weight only the first is listed (the others
    follow its setting in :func:`compress`); a layer whose weight is also held by something that is not compressed
    is left out.
    """
    followers, excluded = tied_layers(model)
    return {n: m for n, m in model.named_modules()
            if n and compressible(m) and n not in followers and n not in excluded}


def unsearched_weights(model: nn.Module) -> dict[str, int]:
    """Weight matrices and kernels of ``model`` (parameters of 2 or more dimensions) that no compressible layer holds,
    by parameter name -> element count: they stay float in every student (a Conv3d, a custom module's own
    ``nn.Parameter``, an LSTM whose forward reads its weights). Biases and normalization parameters are not listed."""
    held = {id(m.weight) for m in compressible_layers(model).values()}
    out: dict[str, int] = {}
    for name, param in model.named_parameters():  # each Parameter once, under its first name
        if param.dim() >= 2 and id(param) not in held:
            out[name] = param.numel()
    return out


def describe_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Describe the compressible layers of ``model`` for a :class:`~metacompress.spaces.CompressionSpace`.

    A layer is marked ``structured=True`` when its output channels can be removed (see :mod:`.prune`).
    """
    return [LayerInfo(name=r.name, kind=r.kind, n_params=r.n_params, shape=r.shape, structured=r.structured)
            for r in structure_report(model, example_input)]


@dataclass(frozen=True)
class LayerStructure:
    """What structured pruning can do to one compressible layer (:func:`structure_report`).

    Attributes:
        name: Module name.
        kind: ``linear``, ``conv1d``, ``conv2d`` or ``embedding``.
        shape: Weight shape.
        n_params: Weight elements.
        structured: Whether structured pruning removes whole outputs of the layer.
        removes: What it removes: ``output channels`` (a conv), ``output features`` (a Linear), ``attention heads
            of 8`` (features each), ``hidden units`` (a recurrent layer); empty when ``structured`` is false.
        coupled: The other layers whose outputs go with this layer's (a residual sum, a head's q/k/v, the gates and
            layers of a recurrent module).
        reason: Why not, when ``structured`` is false (the first obstacle met).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    n_params: int
    structured: bool
    removes: str
    coupled: tuple[str, ...]
    reason: str


def structure_report(model: nn.Module, example_input: torch.Tensor) -> list[LayerStructure]:
    """For every compressible layer of ``model``: whether structured pruning can remove its outputs, with which
    other layers, or why not (what ``metacompress layers`` prints)."""
    groups = channel_groups(model, example_input)
    of = {p: g for g in groups for p in g.producers}
    rnn_inner = {f"{n}.{sub}" for n, m in model.named_modules() if isinstance(m, SplitRNN)
                 for sub, _ in m.named_modules() if sub}
    out = []
    for name, m in compressible_layers(model).items():
        g = of.get(name)
        if g is not None:
            removes = ("hidden units" if name in rnn_inner else f"attention heads of {g.unit}" if g.unit > 1
                       else "output features" if isinstance(m, nn.Linear) else "output channels")
            reason = "" if g.prunable else g.reason or "not prunable"
            coupled = tuple(p for p in g.producers if p != name)
        else:
            removes, coupled = "", ()
            reason = ("an embedding table (pruned element-wise, quantized per row)" if isinstance(m, nn.Embedding)
                      else "an LSTM projection: its outputs are the recurrent state" if name in rnn_inner
                      else "its outputs are read where they cannot be followed")
        structured = g is not None and g.prunable
        out.append(LayerStructure(name, _KINDS[type(m)], tuple(m.weight.shape), m.weight.numel(), structured,
                                  removes if structured else "", coupled, reason))
    return out


def compress(
    teacher: nn.Module, policy: CompressionPolicy, example_input: torch.Tensor | None = None
) -> nn.Module:
    """Return a compressed copy of ``teacher``; the teacher is left untouched.

    Structured policies remove channels first (the copy is physically smaller), then every layer named in the
    policy becomes quantization-aware at its bit-width, with a magnitude mask for unstructured pruning. Layers the
    policy does not name are left alone.

    Args:
        teacher: The trained model.
        policy: The compression policy (validated against the teacher's layers here).
        example_input: One input batch; required for structured pruning (shapes are traced).

    Raises:
        ConfigError: The policy names a layer the teacher lacks, or holds an invalid value.
    """
    layers = compressible_layers(teacher)
    policy.validate(layers)
    student = copy.deepcopy(teacher)
    if policy.prune_method == "structured" and any(lp.prune > 0 for lp in policy.layers.values()):
        if example_input is None:
            raise invalid_value("example_input", "an input batch (structured pruning traces the shapes)", None)
        shrink(student, {n: lp.prune for n, lp in policy.layers.items()}, example_input)
    modules = dict(student.named_modules())
    for name, lp in policy.layers.items():
        mod = to_quantized(modules[name], lp.bits, policy.act_bits)
        if policy.prune_method == "unstructured":
            mod.set_mask(magnitude_mask(mod.weight, lp.prune))
    followers, _ = tied_layers(student)
    for name, leader in followers.items():  # the shared weight: the leader's bits and the very same mask
        if leader in policy.layers:
            mod = to_quantized(modules[name], modules[leader].w_bits, policy.act_bits)
            mod.weight_mask = modules[leader].weight_mask
    return student


def pruned_share(teacher: nn.Module, policy: CompressionPolicy, example_input: torch.Tensor | None = None
                 ) -> dict[str, float]:
    """The share of each compressible layer's weights that the student of ``policy`` no longer holds: masked
    weights (unstructured), or removed outputs and the inputs removed with the layers feeding it (structured, where
    a group takes its largest ratio and a layer that cannot lose outputs may still lose inputs)."""
    student = compress(teacher, policy, example_input)
    after = dict(student.named_modules())
    out = {}
    for name, m in compressible_layers(teacher).items():
        s = after[name]
        mask = getattr(s, "weight_mask", None)
        kept = int(torch.count_nonzero(mask)) if mask is not None else s.weight.numel()
        out[name] = 1.0 - kept / max(m.weight.numel(), 1)
    return out

