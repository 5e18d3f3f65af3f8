"""A model-agnostic encoding of a compression policy, so that knowledge transfers between different models.

A policy lists one prune ratio and one bit width per layer, and models differ in their layers. The encoding
summarizes a policy with a fixed set of numbers (:data:`ENCODING_NAMES`): parameter- and sensitivity-weighted
means, extremes, first/last layer settings, the distillation scalars (λ, T, the feature-map and proximal weights),
the exact compression ratio, and damage proxies that combine the policy with the teacher's per-layer probes
(:func:`~.features.layer_sensitivity`).

:func:`encode_arrays` is the vectorized core (``N`` candidates at once); :func:`encode_policy` wraps it for one
:class:`~metacompress.spaces.CompressionPolicy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from metacompress.spaces import CompressionPolicy, LayerInfo, invalid_value

from .features import ENERGY_GRID, QERR_BITS
from .size import SizeModel, policy_arrays

__all__ = ["ENCODING_DEFAULTS", "ENCODING_NAMES", "encode_policy", "encode_arrays", "scalar_arrays"]

#: Keys of :func:`encode_policy`, in a fixed order (the predictor's input columns after the meta-features).
ENCODING_NAMES: tuple[str, ...] = (
    "prune_mean", "prune_sens", "prune_max", "prune_first", "prune_last",
    "bits_mean", "bits_sens", "bits_min", "bits_first", "bits_last",
    "structured", "act_bits", "kd_lambda", "log_temperature", "epochs", "log10_lr",
    "log_compression_ratio", "prune_damage", "quant_damage",
    "log_prune_energy", "log_quant_error", "log_weight_error", "log_weight_error_max",
    "log1p_feature_beta", "log1p_prox_mu",
)
#: Encoding columns a row written before they existed lacks, with the value such a row stands for: both terms
#: off (``History`` fills them in, so older CSVs and meta-datasets stay usable).
ENCODING_DEFAULTS: dict[str, float] = {"log1p_feature_beta": 0.0, "log1p_prox_mu": 0.0}

_EPS = 1e-6


class _LayerTables:
    """Per-layer constants of one teacher the encoding needs, as arrays over layers."""

    def __init__(self, layers: Sequence[LayerInfo], sensitivity: Mapping[str, Mapping[str, float]]) -> None:
        missing = [info.name for info in layers if info.name not in sensitivity]
        if missing:
            raise invalid_value("sensitivity", "an entry for every layer", f"missing {missing[:3]}")
        counts = np.array([info.n_params for info in layers], dtype=np.float64)
        self.w = counts / max(counts.sum(), 1.0)
        s = [sensitivity[info.name] for info in layers]
        self.s_prune = np.maximum(np.array([d["prune50"] for d in s], dtype=np.float64), 0.0)
        self.s_bits = np.maximum(np.array([d["bits4"] for d in s], dtype=np.float64), 0.0)
        self.w_prune = (self.s_prune + 1e-3) / (self.s_prune + 1e-3).sum()
        self.w_bits = (self.s_bits + 1e-3) / (self.s_bits + 1e-3).sum()
        self.energy = np.array([[d[f"energy{int(round(100 * r)):02d}"] for r in ENERGY_GRID] for d in s])
        self.qerr = np.zeros((len(layers), 33))  # by bit width; 32 (float) keeps 0 error
        for b in range(33):
            near = min(QERR_BITS, key=lambda q: abs(q - b)) if b < 32 else None
            if near is not None:
                self.qerr[:, b] = [d[f"qerr{near}"] for d in s]


def _energy(tables: _LayerTables, prune: np.ndarray) -> np.ndarray:
    grid = np.asarray(ENERGY_GRID)
    out = np.empty_like(prune)
    for j in range(prune.shape[1]):
        out[:, j] = np.interp(prune[:, j], grid, tables.energy[j])
    return out


def scalar_arrays(policies: Sequence[CompressionPolicy]) -> dict[str, np.ndarray]:
    """The policy scalars :func:`encode_arrays` needs, as arrays over ``policies``."""
    return {
        "structured": np.array([p.prune_method == "structured" for p in policies], dtype=np.float64),
        "act_bits": np.array([32 if p.act_bits is None else p.act_bits for p in policies], dtype=np.float64),
        "kd_lambda": np.array([p.kd_lambda for p in policies], dtype=np.float64),
        "temperature": np.array([p.temperature for p in policies], dtype=np.float64),
        "epochs": np.array([p.epochs for p in policies], dtype=np.float64),
        "lr": np.array([p.lr for p in policies], dtype=np.float64),
        "feature_beta": np.array([p.feature_beta for p in policies], dtype=np.float64),
        "prox_mu": np.array([p.prox_mu for p in policies], dtype=np.float64),
    }


def encode_arrays(
    prune: np.ndarray, bits: np.ndarray, scalars: Mapping[str, np.ndarray], layers: Sequence[LayerInfo],
    sensitivity: Mapping[str, Mapping[str, float]], compression_ratio: np.ndarray,
) -> np.ndarray:
    """Encode ``N`` policies given as arrays; columns follow :data:`ENCODING_NAMES`.

    Args:
        prune: ``(N, L)`` prune ratios, layers in ``layers`` order.
        bits: ``(N, L)`` bit widths (32 = float).
        scalars: ``structured``, ``act_bits`` (32 for float), ``kd_lambda``, ``temperature``, ``epochs``, ``lr``,
            ``feature_beta``, ``prox_mu``, each ``(N,)`` (see :func:`scalar_arrays`).
        layers: The teacher's layers.
        sensitivity: Per-layer probes (:func:`~.features.layer_sensitivity`).
        compression_ratio: ``(N,)`` teacher bytes / student bytes (exact, from :class:`~.size.SizeModel`).

    Returns:
        ``(N, len(ENCODING_NAMES))`` float64 array.
    """
    t = _LayerTables(layers, sensitivity)
    prune = np.asarray(prune, dtype=np.float64)
    bits = np.minimum(np.asarray(bits, dtype=np.int64), 32)
    if prune.ndim != 2 or prune.shape != bits.shape or prune.shape[1] != len(t.w):
        raise invalid_value("prune", f"an (N, {len(t.w)}) array with bits of the same shape", prune.shape)
    energy = _energy(t, prune)
    qerr = np.take_along_axis(np.broadcast_to(t.qerr, (len(prune), *t.qerr.shape)), bits[:, :, None], 2)[..., 0]
    werr = energy + (1.0 - energy) * qerr
    cols = {
        "prune_mean": prune @ t.w, "prune_sens": prune @ t.w_prune, "prune_max": prune.max(1),
        "prune_first": prune[:, 0], "prune_last": prune[:, -1],
        "bits_mean": bits @ t.w, "bits_sens": bits @ t.w_bits, "bits_min": bits.min(1),
        "bits_first": bits[:, 0], "bits_last": bits[:, -1],
        "structured": scalars["structured"], "act_bits": scalars["act_bits"], "kd_lambda": scalars["kd_lambda"],
        "log_temperature": np.log(scalars["temperature"]), "epochs": scalars["epochs"],
        "log10_lr": np.log10(scalars["lr"]),
        "log_compression_ratio": np.log(np.asarray(compression_ratio, dtype=np.float64)),
        "prune_damage": (prune / 0.5) ** 2 @ t.s_prune,
        "quant_damage": np.where(bits < 16, 4.0 ** (4 - bits), 0.0) @ t.s_bits,
        "log_prune_energy": np.log10(energy @ t.w + _EPS), "log_quant_error": np.log10(qerr @ t.w + _EPS),
        "log_weight_error": np.log10(werr @ t.w + _EPS), "log_weight_error_max": np.log10(werr.max(1) + _EPS),
        "log1p_feature_beta": np.log1p(scalars["feature_beta"]), "log1p_prox_mu": np.log1p(scalars["prox_mu"]),
    }
    n = len(prune)
    return np.column_stack([np.broadcast_to(np.asarray(cols[k], dtype=np.float64), (n,)) for k in ENCODING_NAMES])


def encode_policy(
    policy: CompressionPolicy, layers: Sequence[LayerInfo], sensitivity: Mapping[str, Mapping[str, float]],
    size_model: SizeModel | None = None, *, compression_ratio: float | None = None,
) -> dict[str, float]:
    """Encode one policy; keys are :data:`ENCODING_NAMES` whatever the model's layers.

    Args:
        policy: The policy (a layer it does not list counts as prune 0, 32 bits).
        layers: The teacher's layers.
        sensitivity: Per-layer probes (:func:`~.features.layer_sensitivity`).
        size_model: Gives the exact compression ratio; may be omitted when ``compression_ratio`` is given.
        compression_ratio: The measured ratio (e.g. from a finished trial), used instead of ``size_model``.

    Raises:
        ConfigError: Neither ``size_model`` nor ``compression_ratio``, or an invalid policy.
    """
    prune, bits, listed, structured, act_quant = policy_arrays(policy, [info.name for info in layers])
    if compression_ratio is None:
        if size_model is None:
            raise invalid_value("size_model", "a SizeModel when compression_ratio is not given", None)
        order = [size_model.layer_names.index(info.name) for info in layers]
        full = np.zeros((1, size_model.n_layers)), np.full((1, size_model.n_layers), 32)
        full_listed = np.zeros((1, size_model.n_layers), dtype=bool)
        full[0][:, order], full[1][:, order], full_listed[:, order] = prune, bits, listed
        size = size_model.bytes(full[0], full[1], structured=structured, act_quant=act_quant, listed=full_listed)
        compression_ratio = size_model.teacher_bytes / float(size[0])
    if not (isinstance(compression_ratio, (int, float)) and math.isfinite(compression_ratio)
            and compression_ratio > 0):
        raise invalid_value("compression_ratio", "a finite number > 0", compression_ratio)
    row = encode_arrays(prune, bits, scalar_arrays([policy]), layers, sensitivity, np.array([compression_ratio]))
    return dict(zip(ENCODING_NAMES, (float(v) for v in row[0])))


