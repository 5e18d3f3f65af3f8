"""Attention whose four projections are plain ``nn.Linear`` layers, so that a search can prune and quantize them.

``nn.MultiheadAttention`` keeps its query, key and value projections in one raw parameter (``in_proj_weight``)
and hands its weights to a functional forward, so swapping one of its layers for a compressed one changes
nothing. :func:`split_attention` rewrites a model so that every ``nn.MultiheadAttention`` becomes a
:class:`SplitAttention` computing the same function through ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``:
ordinary layers that the search compresses like any other (in a Transformer encoder layer they hold a third of
the weights). A model without attention is returned as it is.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SplitAttention", "split_attention", "splittable"]


def splittable(mha: nn.MultiheadAttention) -> bool:
    """Whether :class:`SplitAttention` computes what ``mha`` does (not with ``add_bias_kv`` or ``add_zero_attn``)."""
    return mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn


class SplitAttention(nn.Module):
    """Multi-head attention (the function of ``nn.MultiheadAttention``, same call and outputs) with one
    ``nn.Linear`` per projection.

    Args:
        embed_dim: Width of the queries and of the output.
        num_heads: Heads; ``embed_dim`` must be a multiple.
        dropout: Dropout on the attention weights while training.
        bias: Whether the projections have biases.
        kdim: Width of the keys (default ``embed_dim``).
        vdim: Width of the values (default ``embed_dim``).
        batch_first: Inputs and outputs are ``(batch, sequence, feature)`` (else ``(sequence, batch, feature)``).
    """

    # What nn.TransformerEncoderLayer reads of its attention before choosing its fused fast path: with no
    # in_proj_bias it never takes that path (which would read in_proj_weight) and calls this module instead.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """The same attention as ``mha`` (its weights copied; ``mha`` must be :func:`splittable`)."""
        if not splittable(mha):
            raise ValueError("add_bias_kv and add_zero_attn have no SplitAttention equivalent")
        w = mha.out_proj.weight
        bias = mha.out_proj.bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias, mha.kdim, mha.vdim, mha.batch_first,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if bias else (None, None, None)
            for proj, weight, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(weight)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(w)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, sequence, embed_dim)`` → ``(batch, heads, sequence, head_dim)``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(output, attention weights or None)``.

        Masks follow its conventions: a boolean ``True`` masks a position out, a float mask is added to the scores;
        ``attn_mask`` is ``(L, S)`` or ``(batch * heads, L, S)``, ``key_padding_mask`` ``(batch, S)``.
        ``is_causal`` is a hint that ``attn_mask`` is causal, which this module simply applies.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
            attn_mask = attn_mask.unsqueeze(0) if attn_mask is not None and attn_mask.dim() == 3 else attn_mask
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, length, source)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, q.dtype).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout > 0:  # as nn.MultiheadAttention: the weights returned are the ones applied
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def extra_repr(self) -> str:  # pragma: no cover - repr only
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A mask as scores to add: boolean ``True`` (masked out) becomes ``-inf``, a float mask is kept."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def split_attention(model: nn.Module) -> tuple[nn.Module, int, int]:
    """A copy of ``model`` with every :func:`splittable` ``nn.MultiheadAttention`` made a :class:`SplitAttention`.

    A module shared by several parents stays shared. ``nn.TransformerEncoder`` stacks lose their nested-tensor
    fast path (it reads ``in_proj_weight``); each layer runs its ordinary forward, as in training.

    Returns:
        ``(model, split, kept)``: the rewritten copy (``model`` itself when it has no attention to split), the
        attention modules rewritten, and those left as they are (``add_bias_kv`` / ``add_zero_attn``).
    """
    found = [m for m in model.modules() if type(m) is nn.MultiheadAttention]
    if not any(splittable(m) for m in found):
        return model, 0, len(found)
    out = copy.deepcopy(model)
    memo: dict[int, SplitAttention] = {}
    kept: set[int] = set()
    for parent in list(out.modules()):
        for name, child in parent._modules.items():
            if type(child) is nn.MultiheadAttention:
                if splittable(child):
                    parent._modules[name] = memo.setdefault(id(child), SplitAttention.from_mha(child))
                else:
                    kept.add(id(child))
    for module in out.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return out, len(memo), len(kept)
