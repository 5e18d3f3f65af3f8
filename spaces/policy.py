"""The concrete compression policy one trial evaluates: per-layer prune ratio and bits, plus distillation settings.

A policy is a plain value: construct it freely, call :meth:`CompressionPolicy.validate` before use
(:meth:`CompressionPolicy.from_dict`, :meth:`CompressionPolicy.uniform` and ``CompressionSpace.decode`` validate
for you). Its :meth:`~CompressionPolicy.to_dict` is flat and JSON-safe, so it doubles as the MLflow params of a run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .domains import is_int, is_number
from .errors import invalid_value, unknown_key

__all__ = [
    "ALLOWED_BITS",
    "PRUNE_METHODS",
    "POLICY_SCALARS",
    "LayerPolicy",
    "CompressionPolicy",
    "check_value",
]

#: Weight (and activation) bit widths the quantizer supports; 32 means "keep float".
ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16, 32)
#: Pruning methods: unstructured (element-wise magnitude) or structured (whole output channels).
PRUNE_METHODS: tuple[str, ...] = ("unstructured", "structured")
#: The policy's non-layer fields, in ``to_dict`` order.
POLICY_SCALARS: tuple[str, ...] = (
    "prune_method",
    "act_bits",
    "kd_lambda",
    "temperature",
    "epochs",
    "lr",
    "feature_beta",
    "prox_mu",
)

_BITS_TEXT = "one of " + ", ".join(str(b) for b in ALLOWED_BITS)


def _finite(x: Any) -> bool:
    return is_number(x) and math.isfinite(x)


# name -> (predicate, allowed-values phrase of the error message)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "prune": (lambda x: is_number(x) and 0 <= x < 1, "in [0, 1)"),
    "bits": (lambda x: is_int(x) and x in ALLOWED_BITS, _BITS_TEXT),
    "act_bits": (lambda x: x is None or (is_int(x) and x in ALLOWED_BITS), "None or " + _BITS_TEXT),
    "kd_lambda": (lambda x: is_number(x) and 0 <= x <= 1, "in [0, 1]"),
    "temperature": (lambda x: _finite(x) and x > 0, "a finite number > 0"),
    "epochs": (lambda x: is_int(x) and x >= 0, "an integer >= 0"),
    "lr": (lambda x: _finite(x) and x > 0, "a finite number > 0"),
    "feature_beta": (lambda x: _finite(x) and x >= 0, "a finite number >= 0"),
    "prox_mu": (lambda x: _finite(x) and x >= 0, "a finite number >= 0"),
}


def check_value(name: str, value: Any, field: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is allowed for the policy field ``name``.

    Args:
        name: ``prune``, ``bits`` or one of :data:`POLICY_SCALARS`.
        value: The value to check.
        field: Dotted name for the message (default ``name``), e.g. ``layers.conv1.bits``.
    """
    field = field or name
    if name == "prune_method":
        if not isinstance(value, str) or value not in PRUNE_METHODS:
            raise unknown_key(field, str(value), PRUNE_METHODS)
        return
    predicate, allowed = _CHECKS[name]
    if not predicate(value):
        raise invalid_value(field, allowed, value)


@dataclass(frozen=True)
class LayerPolicy:
    """What to do to one layer.

    Attributes:
        prune: Fraction of weights (unstructured) or output channels (structured) to remove, in [0, 1).
        bits: Weight bit width, one of :data:`ALLOWED_BITS`; 32 keeps float weights.
    """

    prune: float = 0.0
    bits: int = 32


def _py_number(x: Any, integer: bool) -> Any:
    if x is None or isinstance(x, (bool, str)):
        return x
    return int(x) if integer else float(x)


@dataclass(frozen=True)
class CompressionPolicy:
    """A full compression recipe: per-layer plan plus pruning method, activation bits and distillation settings.

    Attributes:
        layers: Per-layer plan keyed by exact module name (e.g. ``features.0``); a missing layer is left alone.
        prune_method: ``unstructured`` or ``structured``.
        act_bits: Activation bit width, or None for float activations.
        kd_lambda: Weight of the label (cross-entropy) loss, in [0, 1]; 1 - kd_lambda weighs the distillation loss
            (``λ·CE + (1−λ)·T²·KL``: 1 trains on the labels alone, 0 on the teacher alone).
        temperature: Distillation temperature, > 0.
        epochs: Fine-tuning epochs, >= 0.
        lr: Fine-tuning learning rate, > 0.
        feature_beta: Weight of the feature-map distillation loss, >= 0.
        prox_mu: Weight of the proximal term pulling the student towards the teacher's weights, >= 0.
    """

    layers: Mapping[str, LayerPolicy] = field(default_factory=dict)
    prune_method: str = "unstructured"
    act_bits: int | None = None
    kd_lambda: float = 0.5
    temperature: float = 4.0
    epochs: int = 2
    lr: float = 1e-3
    feature_beta: float = 0.0
    prox_mu: float = 0.0

    def __hash__(self) -> int:
        return hash(frozenset(self.to_dict().items()))

    def layer(self, name: str) -> LayerPolicy:
        """Return the plan of layer ``name``; a layer the policy does not list gets ``LayerPolicy()`` (left alone)."""
        return self.layers.get(name, LayerPolicy())

    def validate(self, layer_names: Iterable[str] | None = None) -> CompressionPolicy:
        """Check every value; return self.

        Args:
            layer_names: The model's layer names; when given, a policy naming another layer is rejected.

        Raises:
            ConfigError: The first invalid value, named by its ``to_dict`` key (e.g. ``layers.conv1.bits``).
        """
        if not isinstance(self.layers, Mapping):
            raise invalid_value("layers", "a mapping of layer name to LayerPolicy", self.layers)
        known = None if layer_names is None else list(layer_names)
        for name, plan in self.layers.items():
            if not isinstance(name, str):
                raise invalid_value("layers", "a mapping keyed by layer name (str)", name)
            if known is not None and name not in known:
                raise unknown_key("layers", name, known)
            if not isinstance(plan, LayerPolicy):
                raise invalid_value(f"layers.{name}", "a LayerPolicy", plan)
            check_value("prune", plan.prune, f"layers.{name}.prune")
            check_value("bits", plan.bits, f"layers.{name}.bits")
        for name in POLICY_SCALARS:
            check_value(name, getattr(self, name))
        return self

    def to_dict(self) -> dict[str, str | int | float | bool | None]:
        """Return the flat, JSON-safe form (also used as MLflow params).

        Keys: :data:`POLICY_SCALARS`, then ``layers.<name>.prune`` and ``layers.<name>.bits`` per layer in order.
        """
        out: dict[str, Any] = {}
        for name in POLICY_SCALARS:
            out[name] = _py_number(getattr(self, name), integer=name in ("act_bits", "epochs"))
        for name, plan in self.layers.items():
            out[f"layers.{name}.prune"] = _py_number(plan.prune, integer=False)
            out[f"layers.{name}.bits"] = _py_number(plan.bits, integer=True)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], layer_names: Iterable[str] | None = None) -> CompressionPolicy:
        """Build and validate a policy from :meth:`to_dict` output (the exact inverse).

        Missing scalar keys take their defaults; a layer given only ``prune`` keeps 32 bits and vice versa.

        Args:
            d: The flat dict.
            layer_names: Passed to :meth:`validate`.

        Raises:
            ConfigError: Unknown key (with a did-you-mean hint) or invalid value.
        """
        if not isinstance(d, Mapping):
            raise invalid_value("policy", "a mapping", d)
        scalars: dict[str, Any] = {}
        layers: dict[str, dict[str, Any]] = {}
        for key, value in d.items():
            if key in POLICY_SCALARS:
                scalars[key] = value
                continue
            is_layer_key = isinstance(key, str) and key.startswith("layers.")
            parts = key[len("layers.") :].rsplit(".", 1) if is_layer_key else []
            if len(parts) == 2 and parts[1] in ("prune", "bits"):
                layers.setdefault(parts[0], {})[parts[1]] = value
                continue
            raise unknown_key("policy", str(key), [*POLICY_SCALARS, "layers.<name>.prune", "layers.<name>.bits"],
                              what="keys")
        plans = {name: LayerPolicy(**kw) for name, kw in layers.items()}
        return cls(layers=plans, **scalars).validate(layer_names)

    @classmethod
    def uniform(
        cls, layer_names: Iterable[str], prune: float = 0.0, bits: int = 32, **kw: Any
    ) -> CompressionPolicy:
        """Build and validate a policy giving every layer the same ``prune`` and ``bits``.

        Args:
            layer_names: The layers to list.
            prune: Prune ratio of every layer.
            bits: Bit width of every layer.
            **kw: Other fields (``kd_lambda=0.7``, ...).
        """
        names = list(layer_names)
        unknown = [k for k in kw if k not in POLICY_SCALARS]
        if unknown:
            raise unknown_key("policy", unknown[0], POLICY_SCALARS, what="keys")
        return cls(layers={n: LayerPolicy(prune, bits) for n in names}, **kw).validate(names)

    def replace(self, **kw: Any) -> CompressionPolicy:
        """Return a copy with the given fields replaced (not validated)."""
        try:
            return dataclasses.replace(self, **kw)
        except TypeError:
            unknown = next(k for k in kw if k not in ("layers", *POLICY_SCALARS))
            raise unknown_key("policy", unknown, ("layers", *POLICY_SCALARS), what="keys") from None

    def mean_bits(self, weights: Mapping[str, int]) -> float:
        """Parameter-weighted mean weight bit width over ``weights`` (layer name -> n_params).

        A layer the policy does not list counts as 32 bits.
        """
        return self._weighted_mean(weights, lambda plan: plan.bits)

    def mean_prune(self, weights: Mapping[str, int]) -> float:
        """Parameter-weighted mean prune ratio over ``weights`` (layer name -> n_params)."""
        return self._weighted_mean(weights, lambda plan: plan.prune)

    def _weighted_mean(self, weights: Mapping[str, int], value: Callable[[LayerPolicy], float]) -> float:
        total = sum(weights.values())
        if not total > 0:
            raise invalid_value("weights", "a mapping of layer name to n_params with a positive total", total)
        return float(sum(n * value(self.layer(name)) for name, n in weights.items()) / total)
