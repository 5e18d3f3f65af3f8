"""Task meta-features: what a predictor knows about a new task before any trial has run.

Everything here takes seconds: data and model facts, the teacher's accuracy, weight statistics, and cheap
per-layer sensitivity probes — the accuracy drop when one layer alone is magnitude-pruned at 50 % or quantized to
4 bits, with no fine-tuning, on a fixed subsample of the validation data.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metacompress.learners.data import dataset_tensors
from metacompress.spaces import LayerInfo, invalid_value

__all__ = [
    "FEATURE_NAMES",
    "PROBE_ROWS",
    "QERR_BITS",
    "ENERGY_GRID",
    "task_meta_features",
    "layer_sensitivity",
    "weight_statistics",
    "clear_sensitivity_cache",
]

#: Validation rows the sensitivity probes are computed on (a seeded subsample).
PROBE_ROWS = 512
#: Bit widths whose relative weight quantization error each layer records (``qerr<bits>``).
QERR_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16)
#: Prune ratios at which each layer records the share of weight energy pruned (``energy<pct>``).
ENERGY_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))

#: Keys of :func:`task_meta_features`, in a fixed order (the predictor's first input columns).
FEATURE_NAMES: tuple[str, ...] = (
    "log_n_train", "log_n_classes", "input_ndim", "log_input_numel",
    "log_n_params", "n_layers", "log_max_layer_params", "frac_conv_params", "frac_head_params", "has_norm",
    "teacher_acc", "teacher_margin",
    "sens_prune50_mean", "sens_prune50_max", "sens_prune50_first", "sens_prune50_last",
    "sens_bits4_mean", "sens_bits4_max", "sens_bits4_first", "sens_bits4_last",
    "sens_bits2_mean", "sens_prune80_mean",
    "weight_kurtosis", "qerr4_mean", "energy50_mean",
)


def _probe_data(task: Any, seed: int, validation_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to :data:`PROBE_ROWS` seeded rows: validation rows, topped up with training rows when there are few
    (``validation_only``: never; the measured proxy's rows, see :class:`~.proxy.ProxyProbe`)."""
    x, y = dataset_tensors(task.val)  # inputs as the model takes them, int64 labels
    if len(y) < PROBE_ROWS and not validation_only:
        xt, yt = dataset_tensors(task.train)
        x, y = torch.cat([x, xt]), torch.cat([y, yt])
    if len(y) > PROBE_ROWS:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))[:PROBE_ROWS]
        x, y = x[idx], y[idx]
    return x, y


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from metacompress.learners.measure import layer_forwards  # noqa: PLC0415

    with layer_forwards():  # a compressed layer's forward, not a Transformer's fused fast path
        return float((model(x).argmax(1) == y).float().mean())


def _pruned(w: torch.Tensor, ratio: float) -> torch.Tensor:
    from metacompress.learners import magnitude_mask  # noqa: PLC0415 (avoid an import cycle)

    mask = magnitude_mask(w, ratio)
    return w if mask is None else w * mask


def _quantized(w: torch.Tensor, bits: int) -> torch.Tensor:
    from metacompress.learners import fake_quant_weight  # noqa: PLC0415

    return fake_quant_weight(w, bits)


#: Probe name -> weight transform; the drop in accuracy is recorded under that name.
_PROBES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "prune50": lambda w: _pruned(w, 0.5),
    "prune80": lambda w: _pruned(w, 0.8),
    "bits4": lambda w: _quantized(w, 4),
    "bits2": lambda w: _quantized(w, 2),
}


def weight_statistics(weight: torch.Tensor) -> dict[str, float]:
    """Statistics of one weight tensor that predict how it takes compression.

    Returns:
        ``kurtosis`` (excess, of all elements), ``qerr<b>`` — relative squared error ``‖w − q_b(w)‖² / ‖w‖²``
        of per-channel ``b``-bit quantization for each of :data:`QERR_BITS` — and ``energy<pct>`` — the share of
        ``‖w‖²`` removed by magnitude-pruning ``pct`` % of the elements, for each of :data:`ENERGY_GRID`.
    """
    w = weight.detach().float()
    flat = w.flatten().double()
    energy = float(flat.pow(2).sum()) or 1e-30
    std = float(flat.std()) if flat.numel() > 1 else 0.0
    kurt = float(((flat - flat.mean()) ** 4).mean() / std**4 - 3.0) if std > 0 else 0.0
    out = {"kurtosis": kurt}
    for b in QERR_BITS:
        out[f"qerr{b}"] = float((_quantized(w, b) - w).double().pow(2).sum()) / energy
    sq = np.sort(flat.pow(2).numpy())
    cum = np.concatenate([[0.0], np.cumsum(sq)]) / energy
    for r in ENERGY_GRID:
        n_prune = min(int(round(r * sq.size)), sq.size - 1) if r > 0 else 0
        out[f"energy{int(round(100 * r)):02d}"] = float(cum[n_prune])
    return out


@torch.no_grad()
def layer_sensitivity(
    task: Any, layers: Sequence[LayerInfo] | None = None, *, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per-layer sensitivity probes and weight statistics of a task's teacher.

    Each probe changes one layer's weight alone (no fine-tuning) and records the relative accuracy drop
    ``(acc_teacher − acc_probe) / acc_teacher`` on :data:`PROBE_ROWS` seeded rows (validation rows first, topped
    up with training rows when the validation set is small).

    Args:
        task: A :class:`~metacompress.learners.Task`.
        layers: The layers to probe (default: every compressible layer).
        seed: Seed of the validation subsample.

    Returns:
        ``{layer: {"prune50", "prune80", "bits4", "bits2", "kurtosis", "qerr<b>"..., "energy<pct>"...}}``.
    """
    from metacompress.learners import compressible_layers  # noqa: PLC0415

    model = task.teacher
    was_training = model.training
    model.eval()
    modules = compressible_layers(model)
    names = [info.name for info in layers] if layers is not None else list(modules)
    for name in names:
        if name not in modules:
            raise invalid_value("layers", f"layers of the teacher ({', '.join(modules)})", name)
    key = (tuple(names), seed, len(task.train), _checksum(model))
    cached = _SENSITIVITY_CACHE.get(model, {}).get(key)
    if cached is not None:  # a search probes once for its warm start and once for its meta.json
        return copy.deepcopy(cached)
    x, y = _probe_data(task, seed)
    base = max(_accuracy(model, x, y), 1e-6)
    out: dict[str, dict[str, float]] = {}
    try:
        for name in names:
            weight = modules[name].weight
            original = weight.data.clone()
            stats: dict[str, float] = {}
            for probe, transform in _PROBES.items():
                weight.data.copy_(transform(original))
                stats[probe] = (base - _accuracy(model, x, y)) / base
                weight.data.copy_(original)
            out[name] = {**stats, **weight_statistics(original)}
    finally:
        model.train(was_training)
    _SENSITIVITY_CACHE.setdefault(model, {})[key] = copy.deepcopy(out)
    return out


#: Probe results per teacher module (weakly held), keyed by layers, seed, data size and a weight checksum.
_SENSITIVITY_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, dict[str, float]]]] = (
    weakref.WeakKeyDictionary())


def clear_sensitivity_cache() -> None:
    """Forget every cached :func:`layer_sensitivity` result, so the next call probes its teacher again (a long-lived
    process that reuses one teacher object, e.g. a benchmark timing a fresh search's probes)."""
    _SENSITIVITY_CACHE.clear()


def _checksum(model: nn.Module) -> tuple[float, ...]:
    with torch.no_grad():
        tensors = [t.detach().double() for t in model.state_dict().values() if t.is_floating_point()]
        return tuple(x for t in tensors for x in (float(t.sum()), float(t.abs().sum())))


def _data_features(task: Any) -> dict[str, float]:
    shape = tuple(task.input_shape)
    return {
        "log_n_train": math.log(max(len(task.train), 1)),
        "log_n_classes": math.log(task.n_classes),
        "input_ndim": float(len(shape)),
        "log_input_numel": math.log(max(int(np.prod(shape)), 1)),
    }


def _model_features(model: nn.Module, layers: Sequence[LayerInfo]) -> dict[str, float]:
    n_params = sum(p.numel() for p in model.parameters())
    counts = np.array([info.n_params for info in layers], dtype=np.float64)
    total = max(counts.sum(), 1.0)
    conv = sum(info.n_params for info in layers if info.kind in ("conv1d", "conv2d"))
    has_norm = any(isinstance(m, nn.modules.batchnorm._NormBase) or isinstance(m, nn.LayerNorm)
                   for m in model.modules())
    return {
        "log_n_params": math.log(max(n_params, 1)),
        "n_layers": float(len(layers)),
        "log_max_layer_params": math.log(max(counts.max(), 1.0)),
        "frac_conv_params": conv / total,
        "frac_head_params": counts[-1] / total,
        "has_norm": float(has_norm),
    }


def _sensitivity_features(layers: Sequence[LayerInfo], sens: dict[str, dict[str, float]]) -> dict[str, float]:
    counts = np.array([info.n_params for info in layers], dtype=np.float64)
    weights = counts / max(counts.sum(), 1.0)

    def col(key: str) -> np.ndarray:
        return np.array([sens[info.name][key] for info in layers], dtype=np.float64)

    out: dict[str, float] = {}
    for probe in ("prune50", "bits4"):
        v = col(probe)
        out.update({f"sens_{probe}_mean": float(v.mean()), f"sens_{probe}_max": float(v.max()),
                    f"sens_{probe}_first": float(v[0]), f"sens_{probe}_last": float(v[-1])})
    out["sens_bits2_mean"] = float(col("bits2").mean())
    out["sens_prune80_mean"] = float(col("prune80").mean())
    out["weight_kurtosis"] = float(np.log1p(np.maximum(col("kurtosis"), 0.0)) @ weights)
    out["qerr4_mean"] = float(col("qerr4") @ weights)
    out["energy50_mean"] = float(col("energy50") @ weights)
    return out


def task_meta_features(
    task: Any, *, seed: int = 0, layers: Sequence[LayerInfo] | None = None,
    sensitivity: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """The meta-features of a task, keyed by :data:`FEATURE_NAMES` (all finite, deterministic for a seed).

    Args:
        task: A :class:`~metacompress.learners.Task`.
        seed: Seed of the probes' validation subsample.
        layers: The teacher's layers (default ``describe_layers(teacher, example_input)``).
        sensitivity: Output of :func:`layer_sensitivity`, if already computed.
    """
    from metacompress.learners import describe_layers  # noqa: PLC0415

    if layers is None:
        layers = describe_layers(task.teacher, task.example_input(2))
    if sensitivity is None:
        sensitivity = layer_sensitivity(task, layers, seed=seed)
    acc = float(task.info.get("teacher_accuracy", float("nan")))
    if not math.isfinite(acc):
        x, y = _probe_data(task, seed)
        acc = _accuracy(task.teacher.eval(), x, y)
    chance = 1.0 / task.n_classes
    out = {**_data_features(task), **_model_features(task.teacher, layers),
           "teacher_acc": acc, "teacher_margin": (acc - chance) / (1.0 - chance),
           **_sensitivity_features(layers, sensitivity)}
    return {name: float(np.nan_to_num(out[name], nan=0.0, posinf=1e6, neginf=-1e6)) for name in FEATURE_NAMES}
