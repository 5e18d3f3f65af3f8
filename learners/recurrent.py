"""Recurrent layers whose weight matrices are plain ``nn.Linear`` layers, so that a search can prune and quantize them.

``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` keep their weights as raw parameters (``weight_ih_l0``, ``weight_hh_l0``,
...) that a fused kernel reads, so no layer of theirs can be compressed. :func:`split_recurrent` rewrites a model so
that each of them becomes a :class:`SplitRNN` computing the same function (same call, same outputs, packed
sequences and initial states included) through one ``nn.Linear`` per weight matrix: ``lstm.l0.ih`` (input to the
gates, with ``bias_ih``), ``lstm.l0.hh`` (hidden state to the gates, with ``bias_hh``), ``lstm.l0.hr`` (an LSTM's
projection, ``proj_size > 0``), and ``lstm.l0_reverse.*`` for the second direction.

Where the layers only transform their weights (masked and fake-quantized weights: a compressed layer's
``effective_weight``), the module runs the fused kernel on those weights, differentiably, so fine-tuning a
compressed student costs what training the teacher did. Where a layer's *inputs* matter step by step (activation
fake-quant) or something watches the layers (forward hooks: feature distillation, MAC counting), the recurrence
steps through time in Python instead: the input projection runs over the whole sequence at once, then ``hh`` (and
``hr``) once per step, each a call of the layer itself.

Structured pruning (:mod:`.prune`) removes whole hidden units: a unit's row in every gate block of ``ih`` and ``hh``
and its columns wherever the hidden state is read (``hh`` itself, the next layer's ``ih``, ``hr``, and the layers
after the module). ``hidden_size`` follows the weights, so the fused module rebuilt for inference is smaller too.
"""

from __future__ import annotations

import copy

import torch
import torch.func
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .quant import effective_weight

__all__ = ["RECURRENT", "SplitRNN", "fuse_recurrent", "split_recurrent"]

#: The recurrent modules :func:`split_recurrent` rewrites (exact types: a subclass may change the forward).
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class _Direction(nn.Module):
    """The weights of one layer in one direction: ``ih`` (input → gates), ``hh`` (hidden → gates), ``hr``."""

    def __init__(self, n_in: int, hidden: int, gates: int, bias: bool, proj: int, **kw) -> None:
        super().__init__()
        out = proj or hidden
        self.ih = nn.Linear(n_in, gates * hidden, bias=bias, **kw)
        self.hh = nn.Linear(out, gates * hidden, bias=bias, **kw)
        if proj:
            self.hr = nn.Linear(hidden, proj, bias=False, **kw)


class SplitRNN(nn.Module):
    """An LSTM, GRU or Elman RNN (the function of ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, same call and outputs) with
    one ``nn.Linear`` per weight matrix.

    Args:
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size: as in
            ``nn.LSTM`` (``proj_size`` for ``"LSTM"`` only).
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"mode must be one of {sorted(_GATES)}, got {mode!r}")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size is an LSTM's only")
        self.mode, self.input_size, self.hidden_size, self.num_layers = mode, input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.directions = 2 if bidirectional else 1
        self.gates = _GATES[mode]  # the rows of ``ih`` / ``hh`` are ``gates`` blocks of ``hidden_size``
        out = proj_size or hidden_size
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else out * self.directions
            for suffix in ("", "_reverse")[: self.directions]:
                self.add_module(f"l{layer}{suffix}", _Direction(n_in, hidden_size, self.gates, bias, proj_size,
                                                                device=device, dtype=dtype))

    @classmethod
    def from_module(cls, rnn: nn.RNNBase) -> SplitRNN:
        """The same recurrent layer as ``rnn`` (its weights copied)."""
        w = rnn.weight_ih_l0
        new = cls(rnn.mode, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, rnn.batch_first,
                  rnn.dropout, rnn.bidirectional, rnn.proj_size, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for layer in range(rnn.num_layers):
                for suffix in ("", "_reverse")[: new.directions]:
                    d = getattr(new, f"l{layer}{suffix}")
                    d.ih.weight.copy_(getattr(rnn, f"weight_ih_l{layer}{suffix}"))
                    d.hh.weight.copy_(getattr(rnn, f"weight_hh_l{layer}{suffix}"))
                    if rnn.bias:
                        d.ih.bias.copy_(getattr(rnn, f"bias_ih_l{layer}{suffix}"))
                        d.hh.bias.copy_(getattr(rnn, f"bias_hh_l{layer}{suffix}"))
                    if rnn.proj_size:
                        d.hr.weight.copy_(getattr(rnn, f"weight_hr_l{layer}{suffix}"))
        new.train(rnn.training)
        return new

    def fused(self) -> nn.RNNBase:
        """The ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` holding this module's current weights (the fused kernel, for
        inference: what :func:`~metacompress.learners.deployable` runs once compressed weights are plain again)."""
        w = self.l0.ih.weight
        rnn = self._empty(w.device, w.dtype)
        with torch.no_grad():
            for layer in range(self.num_layers):
                for suffix in ("", "_reverse")[: self.directions]:
                    d = getattr(self, f"l{layer}{suffix}")
                    getattr(rnn, f"weight_ih_l{layer}{suffix}").copy_(d.ih.weight)
                    getattr(rnn, f"weight_hh_l{layer}{suffix}").copy_(d.hh.weight)
                    if self.bias:
                        getattr(rnn, f"bias_ih_l{layer}{suffix}").copy_(d.ih.bias)
                        getattr(rnn, f"bias_hh_l{layer}{suffix}").copy_(d.hh.bias)
                    if self.proj_size:
                        getattr(rnn, f"weight_hr_l{layer}{suffix}").copy_(d.hr.weight)
        rnn.train(self.training)
        return rnn

    def _empty(self, device: torch.device, dtype: torch.dtype) -> nn.RNNBase:
        """A fresh ``nn.LSTM`` / ``GRU`` / ``RNN`` of this module's configuration (weights not copied)."""
        kw = {"num_layers": self.num_layers, "bias": self.bias, "batch_first": self.batch_first,
              "dropout": self.dropout, "bidirectional": self.bidirectional, "device": device, "dtype": dtype}
        if self.mode == "LSTM":
            return nn.LSTM(self.input_size, self.hidden_size, proj_size=self.proj_size, **kw)
        if self.mode == "GRU":
            return nn.GRU(self.input_size, self.hidden_size, **kw)
        return nn.RNN(self.input_size, self.hidden_size, nonlinearity=self.mode[4:].lower(), **kw)

    def _kernel(self) -> nn.RNNBase:
        """An ``nn.LSTM`` / ``GRU`` / ``RNN`` of this module's current shape, whose weights :meth:`forward` swaps
        for the layers' effective ones (kept out of the module tree: no parameters or state of this module)."""
        w = self.l0.ih.weight
        key = (self.input_size, self.hidden_size, self.proj_size, w.device, w.dtype)
        cache = self.__dict__.setdefault("_kernels", {})
        if key not in cache:
            cache.clear()
            cache[key] = self._empty("meta", w.dtype)  # shapes only: every weight is replaced at each call
        return cache[key]

    def _fusable(self) -> bool:
        """Whether the fused kernel computes what the step-by-step recurrence does: no layer quantizes its inputs
        and no forward hook watches a layer (nor a global one)."""
        if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
            return False
        return not any(getattr(m, "act_quant", None) is not None or m._forward_hooks or m._forward_pre_hooks
                       for m in self.modules() if isinstance(m, nn.Linear))

    def _fused_weights(self) -> dict[str, torch.Tensor]:
        weights = {}
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                d = getattr(self, f"l{layer}{suffix}")
                weights[f"weight_ih_l{layer}{suffix}"] = effective_weight(d.ih)
                weights[f"weight_hh_l{layer}{suffix}"] = effective_weight(d.hh)
                if self.bias:
                    weights[f"bias_ih_l{layer}{suffix}"] = d.ih.bias
                    weights[f"bias_hh_l{layer}{suffix}"] = d.hh.bias
                if self.proj_size:
                    weights[f"weight_hr_l{layer}{suffix}"] = effective_weight(d.hr)
        return weights

    def flatten_parameters(self) -> None:
        """Nothing to do (``nn.LSTM`` packs its weights for cuDNN here; forwards often call it)."""

    def _step(self, d: _Direction, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
        gh = d.hh(h)
        if self.mode == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return (d.hr(h) if self.proj_size else h), c
        if self.mode == "GRU":
            ir, iz, i_n = gi.chunk(3, -1)
            hr, hz, h_n = gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(i_n + r * h_n)
            return (1 - z) * n + z * h, None
        act = torch.tanh if self.mode == "RNN_TANH" else torch.relu
        return act(gi + gh), None

    def _run(self, d: _Direction, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, reverse: bool,
             lengths: torch.Tensor | None):
        """One layer, one direction over ``x`` ``(batch, time, features)``; padded steps (``t >= lengths``) leave
        the state as it is, so a reversed sequence starts at its own last step."""
        gates = d.ih(x)  # the whole sequence at once
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        outs: list[torch.Tensor | None] = [None] * x.shape[1]
        for t in steps:
            h_new, c_new = self._step(d, gates[:, t], h, c)
            if lengths is not None:
                live = (t < lengths).unsqueeze(1)
                h_new = torch.where(live, h_new, h)
                c_new = None if c is None else torch.where(live, c_new, c)
                outs[t] = h_new * live
            else:
                outs[t] = h_new
            h, c = h_new, c_new
        return torch.stack(outs, 1), h, c

    def forward(self, input: torch.Tensor | PackedSequence, hx=None):  # noqa: A002 - nn.LSTM's argument name
        """As ``nn.LSTM.forward`` (``nn.GRU`` / ``nn.RNN``): ``(output, h_n)``, an LSTM's ``(output, (h_n, c_n))``."""
        if self._fusable():
            kernel = self._kernel().train(self.training)
            return torch.func.functional_call(kernel, self._fused_weights(), (input,) if hx is None else (input, hx))
        return self._stepwise(input, hx)

    def _stepwise(self, input: torch.Tensor | PackedSequence, hx=None):  # noqa: A002
        """:meth:`forward` one step at a time, each matrix through its layer's own forward."""
        packed = input if isinstance(input, PackedSequence) else None
        lengths = None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed, batch_first=True)
            lengths = lengths.to(x.device)
            batched = True
        else:
            batched = input.dim() == 3
            x = input if not batched else (input if self.batch_first else input.transpose(0, 1))
            x = x if batched else x.unsqueeze(0)
        batch = x.shape[0]
        out_size, n_states = self.proj_size or self.hidden_size, self.num_layers * self.directions
        h0, c0 = (hx if self.mode == "LSTM" else (hx, None)) if hx is not None else (None, None)
        if h0 is not None and not batched:
            h0, c0 = h0.unsqueeze(1), None if c0 is None else c0.unsqueeze(1)
        if h0 is None:
            h0 = x.new_zeros(n_states, batch, out_size)
        if c0 is None and self.mode == "LSTM":
            c0 = x.new_zeros(n_states, batch, self.hidden_size)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for k, suffix in enumerate(("", "_reverse")[: self.directions]):
                s = layer * self.directions + k
                out, h, c = self._run(getattr(self, f"l{layer}{suffix}"), x, h0[s],
                                      None if c0 is None else c0[s], k == 1, lengths)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, -1) if self.directions == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                # drawn time-major, as the fused kernel does: the same random draws drop the same units
                x = F.dropout(x.transpose(0, 1).contiguous(), self.dropout).transpose(0, 1)
        h_n = torch.stack(h_n)
        state = (h_n, torch.stack(c_n)) if self.mode == "LSTM" else h_n
        if packed is not None:
            return _repack(x, packed), state
        if not batched:
            x = x.squeeze(0)
            state = (state[0].squeeze(1), state[1].squeeze(1)) if self.mode == "LSTM" else state.squeeze(1)
        elif not self.batch_first:
            x = x.transpose(0, 1)
        return x, state

    def extra_repr(self) -> str:  # pragma: no cover - repr only
        return (f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, batch_first={self.batch_first}")


def _repack(padded: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """``padded`` ``(batch, time, features)``, in the caller's batch order, packed as ``like`` is."""
    order = like.sorted_indices
    x = padded if order is None else padded.index_select(0, order)
    sizes = like.batch_sizes.tolist()
    data = torch.cat([x[:n, t] for t, n in enumerate(sizes)])
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def split_recurrent(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` made a :class:`SplitRNN` (a module
    shared by several parents stays shared).

    Returns:
        ``(model, split)``: the rewritten copy (``model`` itself when it has none) and the modules rewritten.
    """
    if not any(type(m) in RECURRENT for m in model.modules()):
        return model, 0
    out = copy.deepcopy(model)
    memo: dict[int, SplitRNN] = {}
    for parent in list(out.modules()):
        for name, child in parent._modules.items():
            if type(child) in RECURRENT:
                parent._modules[name] = memo.setdefault(id(child), SplitRNN.from_module(child))
    return out, len(memo)


def fuse_recurrent(model: nn.Module) -> int:
    """Replace every :class:`SplitRNN` of ``model`` by its :meth:`~SplitRNN.fused` module, in place (for inference:
    the Linear layers must hold plain weights, see :func:`~metacompress.learners.deployable`). Returns how many."""
    memo: dict[int, nn.RNNBase] = {}
    for parent in list(model.modules()):
        for name, child in parent._modules.items():
            if isinstance(child, SplitRNN):
                parent._modules[name] = memo.setdefault(id(child), child.fused())
    return len(memo)
