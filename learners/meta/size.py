"""Exact storage size of ``compress(teacher, policy)`` without building the student, vectorized over candidates.

:class:`SizeModel` reads the teacher once and then computes :func:`metacompress.learners.size_bytes` of the
compressed student with numpy arithmetic, for thousands of candidate policies at a time. It reproduces
:func:`metacompress.learners.measure.tensor_bits` tensor by tensor (each tensor byte-aligned):

* weight: ``nnz × bits`` with ``nnz = numel − min(round(p·numel), numel − 1)`` for an unstructured prune ratio
  ``p > 0`` (the exact count :func:`~metacompress.learners.magnitude_mask` keeps), ``numel`` otherwise;
* sparse index when the layer carries a mask: the bitmap's ``numel`` bits or, when cheaper, gap codes of the kept
  positions (:func:`~metacompress.learners.measure.sparse_index`); the mask keeps the largest magnitudes, so
  :func:`index_bits_by_nnz` precomputes the exact index cost for every count of kept weights once;
* scales: ``32 × out_channels`` bits when ``bits < 16``;
* everything else in the state dict in fp32 (a tensor held under several names once), plus the 4-byte ``amax``
  buffer of every activation quantizer (none on an embedding; a layer tied to a listed one has its own).

Structured policies are exact too: the channel couplings of :func:`~metacompress.learners.channel_groups` are read
once, a group keeps ``max(1, round(blocks·(1 − max ratio of its producers)))`` blocks of ``unit`` channels (one
channel, or an attention head's ``head_dim``) as :func:`~metacompress.learners.shrink` does, and that shrinks the
producers' weights and biases, the coupled BatchNorm tensors and the inputs of the consumers (``factor`` features
per channel after a flatten).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from metacompress.spaces import CompressionPolicy, invalid_value, unknown_key

__all__ = ["SizeModel", "exact_size_bytes", "index_bits_by_nnz", "policy_arrays"]

_SKIP = ("num_batches_tracked", "weight_mask")


def _nearest_smaller(prio: np.ndarray) -> np.ndarray:
    """For each position, the nearest position to its left with a smaller priority (−1 if none)."""
    out = np.full(len(prio), -1, dtype=np.int64)
    stack: list[int] = []
    values = prio.tolist()
    for q, v in enumerate(values):
        while stack and values[stack[-1]] > v:
            stack.pop()
        if stack:
            out[q] = stack[-1]
        stack.append(q)
    return out


def index_bits_by_nnz(weight: torch.Tensor) -> np.ndarray:
    """Storage bits of the sparse index of ``magnitude_mask(weight, ·)`` for every count of kept weights.

    Entry ``k`` is ``measure.sparse_index(mask)[1]`` for the mask keeping the ``k`` largest-magnitude weights
    (ties kept in flattened order, as :func:`~metacompress.learners.magnitude_mask` does): the bitmap's ``numel``
    bits or the cheapest gap code. Adding the weights in keep order, each new position ``q`` between kept
    neighbours ``a < q < b`` splits the gap of ``b``; the cost of every code width is a cumulative sum of those
    changes, so all ``k`` cost ``O(numel · widths)`` once.
    """
    from metacompress.learners.measure import INDEX_WIDTHS  # noqa: PLC0415

    mag = weight.detach().abs().flatten().double().cpu().numpy()
    n = mag.size
    order = np.argsort(-mag, kind="stable")  # keep order: larger first, ties by position
    prio = np.empty(n, dtype=np.int64)
    prio[order] = np.arange(n)
    left = _nearest_smaller(prio)
    right = n - 1 - _nearest_smaller(prio[::-1])[::-1]  # n (none) maps to n - 1 - (-1) = n
    q, a, b = order, left[order], right[order]
    has_b = b < n
    best = np.full(n + 1, n, dtype=np.int64)
    for w in INDEX_WIDTHS:
        esc = 2**w - 1
        delta = (q - a - 1) // esc + 1 + np.where(has_b, (b - q - 1) // esc - (b - a - 1) // esc, 0)
        best = np.minimum(best, w * np.concatenate([[0], np.cumsum(delta)]))
    return best


@dataclass(frozen=True)
class _Group:
    producers: np.ndarray  # layer indices
    consumers: np.ndarray  # layer indices
    factors: np.ndarray  # input features per channel, per consumer
    width: int
    per_channel_bytes: int  # producer biases + BatchNorm tensors, bytes per kept channel
    unit: int = 1  # channels go in blocks of this many (attention heads)
    gates: int = 1  # producer rows per channel (a recurrent layer's gates)
    min_blocks: int = 1  # blocks always kept


class SizeModel:
    """Storage bytes of compressed students of one teacher, computed from arrays of per-layer settings.

    Args:
        model: The teacher (uncompressed).
        example_input: One input batch; needed only for structured policies (traces the channel couplings).

    Attributes:
        layer_names: Compressible layers in ``describe_layers`` order; array columns follow it.
        teacher_bytes: ``size_bytes(teacher)``.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor | None = None) -> None:
        from metacompress.learners import compressible_layers  # noqa: PLC0415 (avoid an import cycle)
        from metacompress.learners.measure import unique_state  # noqa: PLC0415
        from metacompress.learners.quant import tied_layers  # noqa: PLC0415

        layers = compressible_layers(model)
        self.layer_names: tuple[str, ...] = tuple(layers)
        # activation quantizers a layer's setting brings: its own (not an embedding's: its inputs are indices) and
        # those of the layers tied to it
        modules = dict(model.named_modules())
        quantizers = {name: int(not isinstance(m, nn.Embedding)) for name, m in layers.items()}
        for follower, leader in tied_layers(model)[0].items():
            quantizers[leader] += int(not isinstance(modules[follower], nn.Embedding))
        self._act_quantizers = np.array([quantizers[name] for name in self.layer_names], dtype=np.int64)
        shapes = [tuple(m.weight.shape) for m in layers.values()]
        self._out = np.array([s[0] for s in shapes], dtype=np.int64)
        self._in = np.array([s[1] if len(s) > 1 else 1 for s in shapes], dtype=np.int64)
        self._kernel = np.array([int(np.prod(s[2:], dtype=np.int64)) for s in shapes], dtype=np.int64)
        self._numel = self._out * self._in * self._kernel
        self._index = [index_bits_by_nnz(m.weight) for m in layers.values()]
        weight_keys = {f"{name}.weight" for name in layers}
        self._fixed = int(sum(4 * t.numel() for k, t in unique_state(model).items()
                              if k not in weight_keys and k.rsplit(".", 1)[-1] not in _SKIP))
        self._groups: list[_Group] | None = None
        if example_input is not None:
            self._groups = self._read_groups(model, example_input)
        n_layers = len(self.layer_names)
        self.teacher_bytes = int(self.bytes(np.zeros((1, n_layers)), np.full((1, n_layers), 32),
                                            listed=np.zeros((1, n_layers), dtype=bool))[0])

    def _read_groups(self, model: nn.Module, example_input: torch.Tensor) -> list[_Group]:
        from metacompress.learners import channel_groups  # noqa: PLC0415

        index = {name: i for i, name in enumerate(self.layer_names)}
        modules = dict(model.named_modules())
        out = []
        for g in channel_groups(model, example_input):
            if not g.prunable:
                continue
            per_channel = sum(4 * g.gates for p in g.producers if getattr(modules[p], "bias", None) is not None)
            for norm in g.norms:
                per_channel += 4 * sum(1 for k, t in modules[norm].state_dict().items()
                                       if k not in _SKIP and t.dim() == 1 and t.numel() == g.width)
            out.append(_Group(np.array([index[p] for p in g.producers], dtype=np.int64),
                              np.array([index[c] for c, _ in g.consumers], dtype=np.int64),
                              np.array([f for _, f in g.consumers], dtype=np.int64), int(g.width), per_channel,
                              int(g.unit), int(g.gates), int(g.min_blocks)))
        return out

    @property
    def n_layers(self) -> int:
        """Number of compressible layers (columns of the arrays)."""
        return len(self.layer_names)

    def bytes(
        self, prune: np.ndarray, bits: np.ndarray, *, structured: np.ndarray | None = None,
        act_quant: np.ndarray | None = None, listed: np.ndarray | None = None,
    ) -> np.ndarray:
        """Exact ``size_bytes`` of the students of ``N`` candidate policies.

        Args:
            prune: ``(N, L)`` prune ratios in [0, 1) (output-channel fractions for structured rows).
            bits: ``(N, L)`` weight bit widths.
            structured: ``(N,)`` bool, True where ``prune_method == "structured"`` (default all False).
            act_quant: ``(N,)`` bool, True where activations are quantized (``act_bits < 32``).
            listed: ``(N, L)`` bool, False for layers the policy leaves alone (default all True).

        Returns:
            ``(N,)`` int64 byte counts.
        """
        prune = np.asarray(prune, dtype=np.float64)
        bits = np.asarray(bits, dtype=np.int64)
        n = prune.shape[0]
        if prune.shape != (n, self.n_layers) or bits.shape != prune.shape:
            raise invalid_value("prune", f"an (N, {self.n_layers}) array with bits of the same shape", prune.shape)
        structured = np.zeros(n, bool) if structured is None else np.asarray(structured, bool)
        act_quant = np.zeros(n, bool) if act_quant is None else np.asarray(act_quant, bool)
        listed = np.ones((n, self.n_layers), bool) if listed is None else np.asarray(listed, bool)
        bits = np.where(listed, bits, 32)
        total = np.full(n, self._fixed, dtype=np.int64) + 4 * ((act_quant[:, None] & listed) @ self._act_quantizers)
        unstr = ~structured
        if unstr.any():
            total[unstr] += self._unstructured(prune[unstr] * listed[unstr], bits[unstr], listed[unstr])
        if structured.any():
            total[structured] += self._structured(prune[structured] * listed[structured], bits[structured],
                                                  listed[structured])
        return total

    @staticmethod
    def _weights(nnz, out, bits, index_bits, listed) -> np.ndarray:
        weight = (nnz * bits + 7) // 8
        scale = np.where(listed & (bits < 16), (32 * out + 7) // 8, 0)
        return (weight + (index_bits + 7) // 8 + scale).sum(1)

    def _unstructured(self, prune: np.ndarray, bits: np.ndarray, listed: np.ndarray) -> np.ndarray:
        numel = np.broadcast_to(self._numel, prune.shape)
        n_prune = np.where(prune > 0, np.minimum(np.rint(prune * numel), numel - 1), 0).astype(np.int64)
        nnz = numel - n_prune
        index_bits = np.column_stack([np.where(n_prune[:, j] > 0, self._index[j][nnz[:, j]], 0)
                                      for j in range(self.n_layers)])
        out = np.broadcast_to(self._out, prune.shape)
        return self._weights(nnz, out, bits, index_bits, listed)

    def _structured(self, prune: np.ndarray, bits: np.ndarray, listed: np.ndarray) -> np.ndarray:
        if self._groups is None:
            raise invalid_value("example_input", "a tensor batch (SizeModel of a structured policy)", None)
        n = prune.shape[0]
        out = np.tile(self._out, (n, 1))
        inp = np.tile(self._in, (n, 1))
        extra = np.zeros(n, dtype=np.int64)
        for g in self._groups:
            ratio = prune[:, g.producers].max(1)
            keep = np.maximum(g.min_blocks, np.rint(g.width // g.unit * (1.0 - ratio))).astype(np.int64) * g.unit
            removed = np.clip(g.width - keep, 0, None)
            out[:, g.producers] -= removed[:, None] * g.gates
            for c, f in zip(g.consumers, g.factors):
                inp[:, c] -= removed * f
            extra -= removed * g.per_channel_bytes
        numel = out * inp * self._kernel
        return self._weights(numel, out, bits, np.zeros(numel.shape, dtype=np.int64), listed) + extra

    def policy_bytes(self, policy: CompressionPolicy) -> int:
        """Exact ``size_bytes(compress(teacher, policy))`` of one policy."""
        prune, bits, listed, structured, act_quant = policy_arrays(policy, self.layer_names)
        return int(self.bytes(prune, bits, structured=structured, act_quant=act_quant, listed=listed)[0])


def policy_arrays(policy: CompressionPolicy, layer_names: Sequence[str]) -> tuple[np.ndarray, ...]:
    """``(prune, bits, listed, structured, act_quant)`` arrays (``N = 1``) of one policy over ``layer_names``.

    Raises:
        ConfigError: The policy names a layer not in ``layer_names``, or holds an invalid value.
    """
    if not isinstance(policy, CompressionPolicy):
        raise invalid_value("policy", "a CompressionPolicy", policy)
    policy.validate(layer_names)
    plans = [policy.layer(name) for name in layer_names]
    prune = np.array([[p.prune for p in plans]], dtype=np.float64)
    bits = np.array([[p.bits for p in plans]], dtype=np.int64)
    listed = np.array([[name in policy.layers for name in layer_names]])
    structured = np.array([policy.prune_method == "structured"])
    act_quant = np.array([policy.act_bits is not None and policy.act_bits < 32])
    return prune, bits, listed, structured, act_quant


def exact_size_bytes(policy: CompressionPolicy, layers: Sequence, task_or_model) -> int:
    """Exact ``size_bytes(compress(teacher, policy))`` without compressing.

    Args:
        policy: The policy.
        layers: The teacher's ``LayerInfo`` list (or layer names); checked against the model's layers.
        task_or_model: A :class:`~metacompress.learners.Task` or the teacher module.
    """
    model = getattr(task_or_model, "teacher", task_or_model)
    if not isinstance(model, nn.Module):
        raise invalid_value("task_or_model", "a Task or a torch.nn.Module", type(task_or_model).__name__)
    example = task_or_model.example_input(2) if hasattr(task_or_model, "example_input") else None
    size_model = SizeModel(model, example if policy.prune_method == "structured" else None)
    names = [getattr(info, "name", info) for info in layers]
    for name in names:
        if name not in size_model.layer_names:
            raise unknown_key("layers", str(name), size_model.layer_names)
    return size_model.policy_bytes(policy)
