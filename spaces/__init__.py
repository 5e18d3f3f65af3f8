"""Engine-neutral search spaces and the concrete compression policy a trial evaluates.

Importing this package imports neither torch, optuna nor ray; :mod:`metacompress.spaces.adapters` imports Optuna
and Ray inside its functions.
"""

from __future__ import annotations

from .adapters import suggest, to_optuna, to_ray
from .domains import Categorical, Domain, Float, Int, Ordinal
from .errors import ConfigError, MetacompressError, Terminated, invalid_value, missing_key, prefixed, unknown_key
from .grouping import AUTO_SMALL_FRACTION
from .layers import LAYER_KINDS, LayerInfo
from .policy import ALLOWED_BITS, POLICY_SCALARS, PRUNE_METHODS, CompressionPolicy, LayerPolicy, check_value
from .space import DOMAIN_NAMES, CompressionSpace

__all__ = [
    "Domain",
    "Float",
    "Int",
    "Ordinal",
    "Categorical",
    "LayerInfo",
    "LAYER_KINDS",
    "LayerPolicy",
    "CompressionPolicy",
    "ALLOWED_BITS",
    "PRUNE_METHODS",
    "POLICY_SCALARS",
    "check_value",
    "CompressionSpace",
    "DOMAIN_NAMES",
    "AUTO_SMALL_FRACTION",
    "to_optuna",
    "suggest",
    "to_ray",
    "ConfigError",
    "MetacompressError",
    "Terminated",
    "invalid_value",
    "unknown_key",
    "missing_key",
    "prefixed",
]
