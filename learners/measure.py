"""Honest measurements of a (compressed) model: accuracy, storage size, bit-operations and latency.

``size_bytes`` is the storage cost of :mod:`.export`'s format, tensor by tensor (each byte-aligned):
non-zero weights × bits, an index of the kept positions for sparse layers (the cheaper of a 1-bit-per-weight
bitmap and gap codes, see :func:`sparse_index`), per-channel fp32 scales for quantized layers, and every other
parameter or buffer needed at inference (biases, BatchNorm statistics) in fp32.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import Dataset

from .data import dataset_tensors as _tensors
from .quant import QUANTIZABLE, effective_weight, is_compressed
from .recurrent import fuse_recurrent

__all__ = [
    "accuracy",
    "bitops",
    "deployable",
    "evaluate",
    "measure_latency",
    "module_device",
    "on_device",
    "predict_logits",
    "size_bytes",
    "sparse_index",
    "tensor_bits",
    "unique_state",
]

_SKIP_BUFFERS = ("num_batches_tracked", "weight_mask")


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every tensor once: a tensor held under several names (tied weights, a module
    registered twice) keeps its first name. What is stored, and what :func:`size_bytes` counts."""
    seen: set[int] = set()
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out[key] = t.detach()
    return out


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (``cpu`` for a model without tensors)."""
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _canonical(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return d


@contextmanager
def on_device(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """Run ``model`` on ``device`` inside the block and move it back where it was afterwards.

    A shared model (a task's teacher lives on the CPU, where latency is measured and workers fork) can so serve
    a fine-tuning on the GPU without being copied or left behind there. A model already there is not moved.
    """
    home, target = module_device(model), _canonical(device)
    if home == target:
        yield model
        return
    model.to(target)
    try:
        yield model
    finally:
        model.to(home)


@contextmanager
def layer_forwards() -> Iterator[None]:
    """Run every layer's own ``forward`` while a model is scored: in eval mode without gradients,
    ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` take a fused fast path that reads their Linear
    weights directly, skipping a compressed layer's mask and fake quantization. (A deployable copy holds plain
    weights: its latency is timed with the fast path.)"""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Logits of ``model`` on ``x``, computed on ``device`` in eval mode (mode and device restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        with on_device(model, device), layer_forwards():
            out = torch.cat([model(x[i : i + batch_size].to(device)).float().cpu()
                             for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    return out


def accuracy(model: nn.Module, dataset: Dataset, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    x, y = _tensors(dataset)
    return float((predict_logits(model, x, device=device).argmax(1) == y).float().mean())


#: Widths tried for the gap-coded sparse index (1 bit would only be a bitmap without its trailing zeros).
INDEX_WIDTHS = range(2, 17)


def index_gaps(mask: torch.Tensor) -> torch.Tensor:
    """Zeros skipped before each kept position of the flattened ``mask`` (int64, one per kept weight)."""
    pos = mask.detach().flatten().cpu().nonzero().flatten()
    return torch.diff(pos, prepend=pos.new_full((1,), -1)) - 1


def sparse_index(mask: torch.Tensor) -> tuple[int, int]:
    """The cheapest index of the kept positions of ``mask``: ``(width, bits)``.

    ``width == 0`` is the 1-bit-per-weight bitmap (``bits == mask.numel()``). ``width = w >= 2`` are ``w``-bit
    gap codes, one per kept weight, holding the number of zeros skipped before it; the code ``2**w - 1`` is an
    escape that skips ``2**w - 1`` positions without a weight, so a gap ``g`` costs ``g // (2**w - 1) + 1``
    codes. A gap code is chosen only when strictly smaller than the bitmap (high sparsity).
    """
    n = mask.numel()
    gaps = index_gaps(mask)
    best = (0, n)
    for w in INDEX_WIDTHS:
        bits = w * (len(gaps) + int((gaps // (2**w - 1)).sum()))
        if bits < best[1]:
            best = (w, bits)
    return best


def tensor_bits(module: nn.Module) -> list[tuple[str, int]]:
    """``(tensor, storage bits)`` for the weight of one layer as the export writes it."""
    if not is_compressed(module):
        return [("weight", 32 * module.weight.numel())]
    n = module.weight.numel()
    mask = module.weight_mask
    nnz = n if mask is None else int(mask.count_nonzero())
    out = [("weight", nnz * module.w_bits)]
    if mask is not None:
        width, bits = sparse_index(mask)
        out.append(("bitmap" if width == 0 else "index", bits))
    if module.w_bits < 16:
        out.append(("scale", 32 * module.weight.shape[0]))
    return out


def size_bytes(model: nn.Module) -> int:
    """Storage bytes of ``model`` in the export format (header excluded)."""
    total = 0
    weights, counted = set(), set()
    for name, mod in model.named_modules():
        if isinstance(mod, tuple(QUANTIZABLE)):
            weights.add(f"{name}.weight" if name else "weight")
            if id(mod.weight) not in counted:  # a tied weight is stored once, with its first layer
                counted.add(id(mod.weight))
                total += sum((b + 7) // 8 for _, b in tensor_bits(mod))
    for key, t in unique_state(model).items():
        if key in weights or key.rsplit(".", 1)[-1] in _SKIP_BUFFERS:
            continue
        total += 4 * t.numel()
    return total


#: Layers that multiply-accumulate (a compressed Embedding is a lookup: it counts none).
_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    macs: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, _MAC_LAYERS):
            def hook(m, inp, out, name=name):
                per_out = m.weight[0].numel()  # in_features, or in_channels/groups * kernel
                macs[name] = macs.get(name, 0) + per_out * out[0].numel()
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example_input[:1].to(module_device(model)))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return macs


def bitops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Σ over layers of MACs per sample × weight bits × activation bits (32 for float)."""
    total = 0
    modules = dict(model.named_modules())
    for name, n in _macs(model, example_input).items():
        m = modules[name]
        w_bits = m.w_bits if is_compressed(m) else 32
        a_bits = m.act_quant.bits if is_compressed(m) and m.act_quant is not None else 32
        total += n * w_bits * a_bits
    return int(total)


def deployable(model: nn.Module, int8: bool = True, example_input: torch.Tensor | None = None) -> nn.Module:
    """An inference copy: compressed layers become plain layers holding their effective weights.

    BatchNorm layers are folded into the convolutions before them (``torch.fx`` fusion) when the model traces, and
    split recurrent layers (:class:`~.recurrent.SplitRNN`) become the fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
    again. With ``int8=True``, when a Linear layer has 8 bits or fewer, Linear, LSTM and GRU layers run as dynamic
    int8 (``torch.ao`` quantized kernels).
    With ``example_input`` (a batch of inputs, CPU), the copy is also traced and frozen with TorchScript
    (``torch.jit.trace`` + ``torch.jit.freeze``: constants folded, no Python per layer), which is much faster for
    small models at small batches; it falls back to the eager copy when tracing fails or the traced copy does not
    reproduce the eager outputs on ``example_input``.
    """
    out = copy.deepcopy(model).eval()
    low_bit_linear = set()
    effective: dict[int, nn.Parameter] = {}  # tied layers keep sharing one (effective) weight
    for name, mod in list(out.named_modules()):
        if is_compressed(mod):
            if id(mod.weight) not in effective:
                with torch.no_grad():
                    effective[id(mod.weight)] = nn.Parameter(effective_weight(mod).detach().clone(),
                                                             requires_grad=False)
            w = effective[id(mod.weight)]
            if isinstance(mod, nn.Linear) and mod.w_bits <= 8:
                low_bit_linear.add(name)
            mod.__class__ = next(base for base in QUANTIZABLE if isinstance(mod, base))
            mod.weight = w
            for attr in ("weight_mask", "w_bits", "act_quant"):
                if attr in mod._buffers:
                    del mod._buffers[attr]
                elif attr in mod._modules:
                    del mod._modules[attr]
                elif attr in mod.__dict__:
                    del mod.__dict__[attr]
    fuse_recurrent(out)  # split LSTM/GRU/RNN weights (now plain) back into the fused kernel
    out = _fuse_bn(out)
    if int8 and low_bit_linear:
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic  # noqa: PLC0415 (heavy)

        import warnings

        # torch.ao has no dynamic int8 LSTM with a projection (proj_size): that one keeps float kernels
        spec = {name: default_dynamic_qconfig for name, m in out.named_modules()
                if type(m) in (nn.Linear, nn.GRU) or (type(m) is nn.LSTM and not m.proj_size)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = quantize_dynamic(out, spec, dtype=torch.qint8)
    if example_input is not None:
        out = _freeze(out, example_input)
    return out


class _Frozen(nn.Module):
    """A frozen TorchScript graph behind a plain ``nn.Module`` (``eval()``, ``training``, hooks-free helpers work)."""

    def __init__(self, graph: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "graph", graph)  # not a registered child: train()/eval() must not recurse into it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def _freeze(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    import warnings

    x = example_input.detach().cpu()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(model, x, check_trace=False))
            same = torch.allclose(frozen(x), model(x), rtol=1e-4, atol=1e-5)
            if len(x) > 1:  # traced with a batch: make sure the batch size is not baked in
                same = same and torch.allclose(frozen(x[:1]), model(x[:1]), rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - an untraceable model simply runs eagerly
        return model
    return _Frozen(frozen) if same else model


def _fuse_bn(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse  # noqa: PLC0415

    try:
        return fuse(model)
    except Exception:  # noqa: BLE001 - an untraceable model simply runs unfused
        return model


def _has_low_bit_linear(model: nn.Module) -> bool:
    return any(is_compressed(m) and isinstance(m, nn.Linear) and m.w_bits <= 8 for m in model.modules())


@torch.inference_mode()
def measure_latency(
    model: nn.Module, sample: torch.Tensor, batch_sizes: Sequence[int] = (1, 256), repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Median wall-clock milliseconds per forward pass at each batch size (``latency_ms`` is batch 1)."""
    model.eval()
    out: dict[str, float] = {}
    for bs in batch_sizes:
        x = sample[:1].expand(bs, *sample.shape[1:]).contiguous()
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
        key = "latency_ms" if bs == 1 else f"latency_ms_b{bs}"
        out[key] = statistics.median(times)
    return out


def _best_runtime(
    model: nn.Module, sample: torch.Tensor, batch_sizes: Sequence[int], repeats: int
) -> dict[str, float]:
    """Latency of the faster deployment: float kernels, or dynamic int8 Linear (LSTM, GRU) kernels for <= 8-bit
    layers.

    The runtime is chosen by ``latency_ms`` (the first batch size, timed for both), the metric searches optimize;
    the other batch sizes are then timed for the chosen runtime only (timing a large batch twice was half of a
    trial's evaluation). Adds ``int8_runtime`` (1.0 when int8 was chosen). A model whose int8 form fails to run
    is timed in float.
    """
    first, rest = tuple(batch_sizes[:1]), tuple(batch_sizes[1:])
    runtimes = {0.0: deployable(model, int8=False).cpu()}
    timed = {0.0: measure_latency(runtimes[0.0], sample, first, repeats)}
    if _has_low_bit_linear(model):
        try:
            runtimes[1.0] = deployable(model, int8=True).cpu()
            timed[1.0] = measure_latency(runtimes[1.0], sample, first, repeats)
        except Exception:  # noqa: BLE001 - int8 kernels that do not run here are no option (e.g. nn.Transformer's
            runtimes.pop(1.0, None)  # fast path reads Linear.weight, a method on a dynamic int8 Linear)
    key = next(iter(timed[0.0]))
    flag = 1.0 if 1.0 in timed and timed[1.0][key] < timed[0.0][key] else 0.0
    out = dict(timed[flag])
    if rest:
        out.update(measure_latency(runtimes[flag], sample, rest, repeats))
    return {**out, "int8_runtime": flag}


def evaluate(
    model: nn.Module,
    val: Dataset,
    example_input: torch.Tensor,
    *,
    reference: Mapping[str, float] | None = None,
    latency_repeats: int = 20,
    batch_sizes: Sequence[int] = (1, 256),
    device: str = "cpu",
) -> dict[str, float]:
    """All metrics of one model as a flat dict.

    Args:
        model: A teacher or a compressed student.
        val: Validation data.
        example_input: One input batch (shapes for MACs and latency).
        reference: The teacher's metrics; adds ``compression_ratio`` (teacher size / size) and ``speedup``.
        latency_repeats: Timed repeats per batch size (0 skips latency).
        batch_sizes: Batch sizes timed; batch 1 is reported as ``latency_ms``.
        device: Where accuracy is computed (the model is moved there for it and back). Latency is measured on
            the CPU whatever the device: a search on a GPU still optimizes the CPU deployment.
    """
    metrics: dict[str, float] = {
        "accuracy": accuracy(model, val, device=device),
        "size_bytes": float(size_bytes(model)),
        "bitops": float(bitops(model, example_input)),
    }
    if latency_repeats > 0:
        metrics.update(_best_runtime(model, example_input.cpu(), batch_sizes, latency_repeats))
    if reference:
        metrics["compression_ratio"] = reference["size_bytes"] / metrics["size_bytes"]
        if "latency_ms" in reference and "latency_ms" in metrics:
            metrics["speedup"] = reference["latency_ms"] / max(metrics["latency_ms"], 1e-9)
    return metrics
