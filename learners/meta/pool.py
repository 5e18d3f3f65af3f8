"""A pool of candidate points of a :class:`~metacompress.spaces.CompressionSpace`, as numpy arrays.

The warm-start proposer scores ten thousand candidates at once, so the pool maps unit-cube points (scrambled
Sobol) to parameter values with vectorized versions of each domain's ``from_unit`` — the same values the scalar
``Domain.from_unit`` returns — and lays them out per layer for :class:`~.size.SizeModel` and
:func:`~.encoding.encode_arrays`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metacompress.spaces import Categorical, CompressionSpace, Domain, Float, Int, Ordinal, invalid_value

__all__ = ["CandidatePool", "from_unit_array"]


def from_unit_array(domain: Domain, u: np.ndarray) -> np.ndarray:
    """Vectorized ``domain.from_unit``: numbers for Float/Int, item indices for Ordinal/Categorical."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    if isinstance(domain, Float):
        if domain.log:
            lo, hi = np.log(domain.low), np.log(domain.high)
            return np.clip(np.exp(lo + u * (hi - lo)), domain.low, domain.high)
        return np.clip(domain.low + u * (domain.high - domain.low), domain.low, domain.high)
    if isinstance(domain, Int):
        if domain.log:
            a, b = np.log(domain.low - 0.5), np.log(domain.high + 0.5)
            x = np.rint(np.exp(a + u * (b - a)))
        else:
            x = domain.low + np.floor(u * (domain.high - domain.low + 1))
        return np.clip(x, domain.low, domain.high).astype(np.int64)
    if isinstance(domain, (Ordinal, Categorical)):
        n = len(domain.landmarks())
        return np.minimum((u * n).astype(np.int64), n - 1)
    raise invalid_value("domain", "a Float, Int, Ordinal or Categorical domain", type(domain).__name__)


def _value(domain: Domain, raw: Any) -> Any:
    """The Python value of one raw array entry (an index for discrete domains)."""
    if isinstance(domain, (Ordinal, Categorical)):
        return domain.landmarks()[int(raw)]
    return int(raw) if isinstance(domain, Int) else float(raw)


def _numeric(domain: Domain, raw: np.ndarray, none_as: float = 32.0) -> np.ndarray:
    """Numeric array of a parameter's values (None → ``none_as``; strings are not numeric)."""
    if isinstance(domain, (Ordinal, Categorical)):
        items = np.array([none_as if v is None else v for v in domain.landmarks()], dtype=object)
        return items[raw]
    return raw.astype(np.float64)


@dataclass
class CandidatePool:
    """``N`` candidate points of a space.

    Attributes:
        space: The space.
        raw: Parameter name -> ``(N,)`` array (values, or item indices for discrete domains).
        prune: ``(N, L)`` per-layer prune ratios, layers in ``space.layers`` order.
        bits: ``(N, L)`` per-layer bit widths.
        scalars: ``structured``, ``act_bits``, ``kd_lambda``, ``temperature``, ``epochs``, ``lr``, ``feature_beta``,
            ``prox_mu`` arrays.
    """

    space: CompressionSpace
    raw: dict[str, np.ndarray]
    prune: np.ndarray
    bits: np.ndarray
    scalars: dict[str, np.ndarray]

    @classmethod
    def sobol(cls, space: CompressionSpace, n: int, seed: int) -> CandidatePool:
        """``n`` points of a scrambled Sobol design over the searched parameters."""
        names = list(space.params)
        if n < 1:
            raise invalid_value("n_candidates", "an integer >= 1", n)
        from scipy.stats import qmc  # noqa: PLC0415

        if names:
            try:
                sobol = qmc.Sobol(d=len(names), scramble=True, rng=int(seed))
            except TypeError:  # scipy < 1.15
                sobol = qmc.Sobol(d=len(names), scramble=True, seed=int(seed))
            units = sobol.random_base2(m=(int(n) - 1).bit_length())[: int(n)]
        else:
            units = np.zeros((1, 0))
        return cls.from_units(space, units)

    @classmethod
    def from_units(cls, space: CompressionSpace, units: np.ndarray) -> CandidatePool:
        """Candidates from unit-cube points, one column per searched parameter (``space.params`` order)."""
        params = space.params
        raw = {key: from_unit_array(domain, units[:, j]) for j, (key, domain) in enumerate(params.items())}
        return cls._build(space, raw, len(units))

    @classmethod
    def _build(cls, space: CompressionSpace, raw: dict[str, np.ndarray], n: int) -> CandidatePool:
        domains, params = space.domains, space.params

        def numeric(key: str, kind: str) -> np.ndarray:
            domain = params.get(key, domains[kind])
            if key in params:
                return _numeric(domain, raw[key])
            value = domain.constant_value
            return np.full(n, 32.0 if value is None else value, dtype=object)

        group_of = {name: g for g, names in space.groups.items() for name in names}
        prune = np.column_stack([numeric(f"prune.{group_of[i.name]}", "prune") for i in space.layers])
        bits = np.column_stack([numeric(f"bits.{group_of[i.name]}", "bits") for i in space.layers])
        method = numeric("prune_method", "prune_method")
        structured = method == "structured"
        prunable = np.array([info.structured for info in space.layers])
        prune = np.where(structured[:, None] & ~prunable[None, :], 0.0, prune.astype(np.float64))
        scalars = {"structured": structured.astype(np.float64)}
        for name in ("act_bits", "kd_lambda", "temperature", "epochs", "lr", "feature_beta", "prox_mu"):
            scalars[name] = numeric(name, name).astype(np.float64)
        return cls(space, raw, prune, bits.astype(np.int64), scalars)

    def __len__(self) -> int:
        return len(self.prune)

    def params(self, i: int) -> dict[str, Any]:
        """The parameter dict of candidate ``i`` (valid for ``space.decode``)."""
        params = self.space.params
        return {key: _value(params[key], self.raw[key][i]) for key in params}

    def key(self, i: int) -> tuple:
        """A hashable identity of candidate ``i`` (equal keys decode to the same policy)."""
        return tuple(sorted((k, repr(v)) for k, v in self.params(i).items()))

    def layer_order(self, names: Sequence[str]) -> np.ndarray:
        """Column index in ``prune``/``bits`` of each name (−1 where the space lacks the layer)."""
        index = {name: j for j, name in enumerate(self.space.layer_names)}
        return np.array([index.get(name, -1) for name in names], dtype=np.int64)
