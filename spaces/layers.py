"""Description of one compressible layer of a teacher model, as the search space sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .domains import is_int
from .errors import ConfigError, invalid_value, missing_key, prefixed, unknown_key

__all__ = ["LayerInfo", "LAYER_KINDS"]

#: Layer kinds the compression ops know how to prune and quantize.
LAYER_KINDS: tuple[str, ...] = ("linear", "conv1d", "conv2d", "embedding")


@dataclass(frozen=True)
class LayerInfo:
    """One compressible layer, keyed by its exact module name.

    Built by ``learners`` from a teacher's modules; the space only reads it.

    Attributes:
        name: Exact module name, e.g. ``features.0``.
        kind: One of :data:`LAYER_KINDS`.
        n_params: Number of weight elements.
        shape: Weight shape, e.g. ``(16, 1, 3, 3)``.
        structured: Whether channel (structured) pruning may touch the layer; a classifier head usually may not.
    """

    name: str
    kind: str
    n_params: int
    shape: tuple[int, ...]
    structured: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise invalid_value("name", "a non-empty string", self.name)
        if self.kind not in LAYER_KINDS:
            raise unknown_key(f"{self.name}.kind", str(self.kind), LAYER_KINDS)
        if not is_int(self.n_params) or self.n_params < 0:
            raise invalid_value(f"{self.name}.n_params", "an integer >= 0", self.n_params)
        shape = tuple(self.shape) if isinstance(self.shape, (list, tuple)) else self.shape
        if not isinstance(shape, tuple) or not all(is_int(s) and s >= 0 for s in shape):
            raise invalid_value(f"{self.name}.shape", "a tuple of integers >= 0", self.shape)
        if not isinstance(self.structured, bool):
            raise invalid_value(f"{self.name}.structured", "true or false", self.structured)
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "n_params", int(self.n_params))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict; :meth:`from_dict` inverts it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "n_params": self.n_params,
            "shape": list(self.shape),
            "structured": self.structured,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "layer") -> LayerInfo:
        """Build a layer from :meth:`to_dict` output.

        Args:
            d: The dict; ``structured`` may be omitted (default True).
            field: Dotted path used in error messages, e.g. ``space.layers``.

        Raises:
            ConfigError: Missing or unknown key, or an invalid value.
        """
        if not isinstance(d, Mapping):
            raise invalid_value(field, "a mapping with keys name, kind, n_params, shape", d)
        allowed = ("name", "kind", "n_params", "shape", "structured")
        for key in d:
            if key not in allowed:
                raise unknown_key(field, str(key), allowed, what="keys")
        for key in allowed[:4]:
            if key not in d:
                raise missing_key(f"{field}.{key}")
        try:
            return cls(**d)
        except ConfigError as err:
            raise prefixed(err, field) from None
