"""Honest measurements of a (compressed) model: accuracy, storage size, bit-operations and latency.

``size_bytes`` is the storage cost of :mod:`.export`'s format, tensor by tensor (each byte-aligned):
non-zero weights × bits, an index of the kept positions for sparse layers (the cheaper of a 1-bit-per-weight
bitmap and gap codes, see :func:`sparse_index`), per-channel fp32 scales for quantized layers, and every other
parameter or buffer needed at inference (biases, BatchNorm statistics) in fp32.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import Dataset

from .data import dataset_tensors as _tensors
from .quant import QUANTIZABLE, effective_weight, is_compressed
from .recurrent import SplitRNN, fuse_recurrent

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
def in_eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block (BatchNorm reads its running statistics and does not update
    them, dropout is off) and give every submodule back its own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


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
    with in_eval_mode(model), on_device(model, device), layer_forwards():
        return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


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
    """Σ over layers of MACs per sample × weight bits × activation bits (32 for float).

    The MACs are those of the layers' dense shapes: structured pruning (narrower layers) lowers them, unstructured
    sparsity (zeros in a dense weight, which dense kernels still multiply) does not."""
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
    again. With ``int8=True``, the layers the policy keeps at 8 bits or fewer run as dynamic int8 (``torch.ao``
    quantized kernels): such a Linear layer, and a fused LSTM (without a projection) or GRU whose every weight
    matrix has 8 bits or fewer. Every other layer keeps its float weights, as its policy says.
    With ``example_input`` (a batch of inputs, CPU), the copy is also traced and frozen with TorchScript
    (``torch.jit.trace`` + ``torch.jit.freeze``: constants folded, no Python per layer), which is much faster for
    small models at small batches; it falls back to the eager copy when tracing fails or the traced copy does not
    reproduce the eager outputs on ``example_input``.
    """
    out = copy.deepcopy(model).eval()
    low_bit_linear = _int8_layers(out)
    effective: dict[int, nn.Parameter] = {}  # tied layers keep sharing one (effective) weight
    for name, mod in list(out.named_modules()):
        if is_compressed(mod):
            if id(mod.weight) not in effective:
                with torch.no_grad():
                    effective[id(mod.weight)] = nn.Parameter(effective_weight(mod).detach().clone(),
                                                             requires_grad=False)
            w = effective[id(mod.weight)]
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
        spec = {name: default_dynamic_qconfig for name, m in out.named_modules() if name in low_bit_linear and (
            type(m) in (nn.Linear, nn.GRU) or (type(m) is nn.LSTM and not m.proj_size))}
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


def _int8_layers(model: nn.Module) -> set[str]:
    """The names of the layers :func:`deployable` may run as dynamic int8: a compressed Linear layer of 8 bits or
    fewer outside a recurrent layer, and a split recurrent layer (fused under its own name) whose every weight
    matrix is compressed to 8 bits or fewer."""
    names: set[str] = set()
    inside: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, SplitRNN):
            linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
            inside.update(f"{name}.{sub}" for sub, m in mod.named_modules() if isinstance(m, nn.Linear))
            if linears and all(is_compressed(m) and m.w_bits <= 8 for m in linears):
                names.add(name)
    return names | {name for name, mod in model.named_modules() if name not in inside and is_compressed(mod)
                    and isinstance(mod, nn.Linear) and mod.w_bits <= 8}


def _has_low_bit_linear(model: nn.Module) -> bool:
    return bool(_int8_layers(model))


#: A timed block calls the model until it has taken at least this long (a 0.05 ms model: 4 calls). Short, so that
#: on a busy machine most blocks run without being preempted (``experiments/bench_latency.py`` compares lengths).
BLOCK_S = 2e-4

#: How :func:`evaluate` times a student beside a baseline; a study records it, so that a resume can say when its
#: earlier trials were timed another way (their latencies are then not comparable with the new ones').
LATENCY_TIMING = "paired with the teacher, every batch size"


def _batch(sample: torch.Tensor, size: int) -> torch.Tensor:
    return sample[:1].expand(size, *sample.shape[1:]).contiguous()


def _latency_key(batch_size: int) -> str:
    return "latency_ms" if batch_size == 1 else f"latency_ms_b{batch_size}"


@torch.inference_mode()
def time_blocks(models: Sequence[nn.Module], x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> list[list[float]]:
    """Milliseconds per call of each model, one value per timed block, the models interleaved block by block.

    Each round times one block of every model in turn, so load that comes and goes (another process, a trial
    training on the next core) falls on all of them alike, and the ratio of two models' blocks of one round is
    nearly free of it. A block repeats the call until :data:`BLOCK_S` has passed (calibrated once per model).
    """
    calls = []
    for model in models:
        model.eval()
        for _ in range(max(warmup, 1)):
            model(x)
        t0 = time.perf_counter()
        model(x)
        calls.append(max(1, min(1000, math.ceil(BLOCK_S / max(time.perf_counter() - t0, 1e-7)))))
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for model, number, out in zip(models, calls, times):
            t0 = time.perf_counter()
            for _ in range(number):
                model(x)
            out.append((time.perf_counter() - t0) * 1e3 / number)
    return times


def measure_latency(
    model: nn.Module, sample: torch.Tensor, batch_sizes: Sequence[int] = (1, 256), repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Wall-clock milliseconds per forward pass at each batch size (``latency_ms`` is batch 1): the median of
    ``repeats`` timed blocks (:func:`time_blocks`)."""
    return {_latency_key(bs): statistics.median(time_blocks([model], _batch(sample, bs), repeats, warmup)[0])
            for bs in batch_sizes}


def _paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """How many times faster ``fast`` ran than ``slow`` in the same rounds: the ratio of their fastest blocks. A
    preempted block only ever runs slower, and each model needs one clean block of the rounds, not most of them."""
    return min(slow) / max(min(fast), 1e-9)


def _best_runtime(
    model: nn.Module, sample: torch.Tensor, batch_sizes: Sequence[int], repeats: int,
    baseline: nn.Module | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Latency of the faster deployment: float kernels, or dynamic int8 kernels for the layers of 8 bits or fewer.

    The runtime is chosen at the first batch size (``latency_ms``, the metric searches optimize), both timed in the
    same rounds; the other batch sizes are then timed for the chosen runtime only (timing a large batch twice was
    half of a trial's evaluation). Adds ``int8_runtime`` (1.0 when int8 was chosen). A model whose int8 form fails
    to run is timed in float. With ``baseline`` (an inference-ready model, e.g. the teacher's
    ``deployable(teacher, int8=False)``) timed in the same rounds at every batch size, the second dict holds, per
    latency key, how many times faster the chosen runtime ran than the baseline in those rounds.
    """
    first, rest = batch_sizes[0], tuple(batch_sizes[1:])
    x = _batch(sample, first)
    runtimes = [deployable(model, int8=False).cpu()]
    if _has_low_bit_linear(model):
        try:
            int8 = deployable(model, int8=True).cpu().eval()
            with torch.inference_mode():
                int8(x)
            runtimes.append(int8)
        except Exception:  # noqa: BLE001 - int8 kernels that do not run here are no option (e.g. nn.Transformer's
            pass  # fast path reads Linear.weight, a method on a dynamic int8 Linear)
    partner = [baseline] if baseline is not None else []
    timed = time_blocks([*runtimes, *partner], x, repeats)
    flag = 1.0 if len(runtimes) > 1 and _paired_ratio(timed[0], timed[1]) > 1.0 else 0.0
    out = {_latency_key(first): statistics.median(timed[int(flag)]), "int8_runtime": flag}
    speedups = {_latency_key(first): _paired_ratio(timed[-1], timed[int(flag)])} if partner else {}
    for bs in rest:
        timed = time_blocks([runtimes[int(flag)], *partner], _batch(sample, bs), repeats)
        out[_latency_key(bs)] = statistics.median(timed[0])
        if partner:
            speedups[_latency_key(bs)] = _paired_ratio(timed[-1], timed[0])
    return out, speedups


def evaluate(
    model: nn.Module,
    val: Dataset,
    example_input: torch.Tensor,
    *,
    reference: Mapping[str, float] | None = None,
    latency_repeats: int = 20,
    batch_sizes: Sequence[int] = (1, 256),
    device: str = "cpu",
    baseline: nn.Module | None = None,
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
        baseline: The teacher's inference form (``deployable(teacher, int8=False)``), with ``reference``: it is
            timed at each batch size in the same rounds as the model, and each latency (``latency_ms``,
            ``latency_ms_b256``, ...) is the reference's at that batch size divided by how many times faster than
            it the model ran in those rounds (fastest block to fastest block; ``speedup`` is batch 1's). A busy
            machine slows both alike, so trials timed at different moments, or on different machines, stay
            comparable. Without it (or for a batch size the reference lacks) a latency is the model's own median.
    """
    metrics: dict[str, float] = {
        "accuracy": accuracy(model, val, device=device),
        "size_bytes": float(size_bytes(model)),
        "bitops": float(bitops(model, example_input)),
    }
    if latency_repeats > 0:
        paired = reference is not None and baseline is not None
        timed, speedups = _best_runtime(model, example_input.cpu(), batch_sizes, latency_repeats,
                                        baseline.cpu() if paired else None)
        metrics.update(timed)
        for key, ratio in speedups.items():  # the teacher's latency, as fast as the model ran beside it
            if key in reference:
                metrics[key] = reference[key] / max(ratio, 1e-9)
    if reference:
        metrics["compression_ratio"] = reference["size_bytes"] / metrics["size_bytes"]
        if "latency_ms" in reference and "latency_ms" in metrics:
            metrics["speedup"] = reference["latency_ms"] / max(metrics["latency_ms"], 1e-9)
    return metrics
