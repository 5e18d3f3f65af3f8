"""Quantization-aware layers: per-channel symmetric weight fake-quant and optional activation fake-quant.

A compressed layer is the original ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Embedding`` with its class
swapped for the matching ``Q*`` subclass (:func:`to_quantized`). Its forward computes the *effective* weight
``fake_quant(weight * weight_mask, w_bits)`` and feeds the usual functional op, so gradients flow through the
straight-through estimator of :func:`torch.fake_quantize_per_channel_affine` and pruned weights stay at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ActQuant",
    "QConv1d",
    "QConv2d",
    "QEmbedding",
    "QLinear",
    "QUANTIZABLE",
    "channel_scale",
    "compressible",
    "effective_weight",
    "fake_quant_weight",
    "is_compressed",
    "qmax",
    "quantize_codes",
    "tied_layers",
    "to_quantized",
]


def qmax(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit grid (codes lie in ``[-qmax, qmax]``)."""
    return 2 ** (bits - 1) - 1


def channel_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale ``max|w| / qmax`` (never zero)."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    return (amax / qmax(bits)).clamp_min(1e-12)


def fake_quant_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``weight`` to a per-channel symmetric ``bits``-bit grid, with a straight-through gradient."""
    if bits >= 32:
        return weight
    if bits == 16:
        return weight + (weight.half().float() - weight).detach()
    scale = channel_scale(weight, bits).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    q = qmax(bits)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -q, q)


def quantize_codes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes in ``[-qmax, qmax]`` and the per-channel scales of ``weight`` (used by export)."""
    scale = channel_scale(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    codes = torch.round(weight.detach() / scale.view(shape)).clamp(-qmax(bits), qmax(bits))
    return codes.to(torch.int8), scale


class ActQuant(nn.Module):
    """Per-tensor symmetric fake-quant of activations with an EMA of the observed range.

    The range is tracked in training mode and frozen in eval mode; ``bits >= 32`` makes it an identity.
    """

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = int(bits)
        self.momentum = momentum
        self.register_buffer("amax", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= 32:
            return x
        q = qmax(self.bits)
        if self.training:  # tensor ops only: no read-back, so a GPU never waits here
            cur = x.detach().abs().amax().to(self.amax.dtype)
            self.amax.copy_(torch.where(self.amax == 0, cur, torch.lerp(self.amax, cur, self.momentum)))
        scale = (self.amax.clamp_min(1e-8) / q).float().reshape(1)
        zero = torch.zeros(1, dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, -q, q)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class _Compressed:
    """Mixin holding the compression state of one layer: bit-width, mask and activation quantizer."""

    w_bits: int
    act_quant: ActQuant | None
    weight_mask: torch.Tensor | None
    weight: nn.Parameter

    def _init_compression(self, w_bits: int, act_bits: int | None) -> None:
        self.w_bits = int(w_bits)
        self.register_buffer("weight_mask", None)
        self.act_quant = ActQuant(act_bits) if act_bits is not None and act_bits < 32 else None

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Attach a 0/1 mask of the weight's shape (``None`` removes it); masked weights are zeroed too."""
        if mask is None:
            self.weight_mask = None
            return
        self.weight_mask = mask.to(self.weight.dtype).to(self.weight.device)
        with torch.no_grad():
            self.weight.mul_(self.weight_mask)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight if self.weight_mask is None else self.weight * self.weight_mask
        return fake_quant_weight(w, self.w_bits)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    def extra_repr(self) -> str:  # pragma: no cover - repr only
        sparsity = 0.0 if self.weight_mask is None else 1.0 - float(self.weight_mask.mean())
        return f"{super().extra_repr()}, w_bits={self.w_bits}, sparsity={sparsity:.2f}"


class QLinear(_Compressed, nn.Linear):
    """``nn.Linear`` with a pruning mask and weight/activation fake-quant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), self.effective_weight(), self.bias)


class QConv1d(_Compressed, nn.Conv1d):
    """``nn.Conv1d`` with a pruning mask and weight/activation fake-quant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.effective_weight(), self.bias)


class QConv2d(_Compressed, nn.Conv2d):
    """``nn.Conv2d`` with a pruning mask and weight/activation fake-quant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.effective_weight(), self.bias)


class QEmbedding(_Compressed, nn.Embedding):
    """``nn.Embedding`` with a pruning mask and per-row weight fake-quant. Its inputs are indices: no activation
    fake-quant. Gradients are dense (they flow through the fake quantization of the whole table)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.effective_weight(), self.padding_idx, None, 2.0, self.scale_grad_by_freq, False)


QUANTIZABLE: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QLinear,
    nn.Conv1d: QConv1d,
    nn.Conv2d: QConv2d,
    nn.Embedding: QEmbedding,
}


def compressible(module: nn.Module) -> bool:
    """Whether ``module`` is a layer :func:`to_quantized` can compress: a Linear, Conv1d or Conv2d, or an Embedding
    that does not renormalize its rows (``max_norm`` rewrites the stored weight on every lookup)."""
    return type(module) in QUANTIZABLE and not (isinstance(module, nn.Embedding) and module.max_norm is not None)


def _layer(module: nn.Module) -> bool:
    return compressible(module) or is_compressed(module)


def tied_layers(model: nn.Module) -> tuple[dict[str, str], set[str]]:
    """Compressible layers whose weight is one ``Parameter`` held by several modules (an embedding tied to the
    output head, a layer reused under two names of different modules).

    Returns:
        ``(followers, excluded)``: ``followers`` maps each layer that shares its weight with an earlier compressible
        layer (module order) to that layer, its *leader*: a policy names the leader only and the followers take its
        setting, so the shared tensor is masked and quantized once and stored once. ``excluded`` names the layers
        whose weight something other than a compressible layer's ``weight`` also holds (a layer left out of the
        search, another attribute): those are not compressed at all, since compressing one holder would change the
        other's tensor behind its back. Compressed layers count as the layers they were, so a student answers as
        its teacher does.
    """
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():  # each module once, however many names it has
        for attr, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((mod, attr))
    names = {id(m): n for n, m in model.named_modules() if n}
    followers: dict[str, str] = {}
    excluded: set[str] = set()
    for mod in model.modules():
        name = names.get(id(mod))
        if name is None or not _layer(mod):
            continue
        group = holders.get(id(mod.weight), [])
        if len(group) < 2:
            continue
        if any(attr != "weight" or not _layer(m) or id(m) not in names for m, attr in group):
            excluded.add(name)
        elif group[0][0] is not mod:
            followers[name] = names[id(group[0][0])]
    return followers, excluded


def is_compressed(module: nn.Module) -> bool:
    """Whether ``module`` is one of the compressed layer types."""
    return isinstance(module, _Compressed)


def to_quantized(module: nn.Module, w_bits: int, act_bits: int | None = None) -> nn.Module:
    """Turn a plain Linear/Conv layer into its compressed subclass, in place, and return it."""
    if is_compressed(module):
        module.w_bits = int(w_bits)
        return module
    module.__class__ = QUANTIZABLE[type(module)]
    module._init_compression(w_bits, None if isinstance(module, nn.Embedding) else act_bits)
    return module


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer really computes with (masked and quantized for compressed layers)."""
    return module.effective_weight() if is_compressed(module) else module.weight
