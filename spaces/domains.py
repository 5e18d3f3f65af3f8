"""Engine-neutral domains: the set of values one searched parameter may take.

A :class:`Domain` knows nothing about Optuna or Ray; :mod:`metacompress.spaces.adapters` translates it at the edge.
Every domain maps to and from the unit interval, which is what space-filling designs (Sobol) and predictor
encodings work in.
"""

from __future__ import annotations

import abc
import math
import numbers
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError, invalid_value, prefixed, unknown_key

__all__ = ["Domain", "Float", "Int", "Ordinal", "Categorical", "is_number", "is_int"]

#: Value types a :class:`Categorical` choice may have (all JSON-safe).
ChoiceType = str | int | float | bool | None


def is_number(x: Any) -> bool:
    """Return True for real numbers other than bools (numpy scalars included)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_int(x: Any) -> bool:
    """Return True for integers other than bools (numpy integers included)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _kind(x: Any) -> str:
    """Type class used to compare choices, so that ``True`` never matches ``1`` nor ``4.0`` matches ``4``."""
    if x is None:
        return "none"
    if isinstance(x, bool):
        return "bool"
    if is_int(x):
        return "int"
    if is_number(x):
        return "float"
    return "str" if isinstance(x, str) else type(x).__name__


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _py(x: Any) -> Any:
    """Convert numpy scalars to the matching Python type (JSON-safe)."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if is_int(x):
        return int(x)
    if is_number(x):
        return float(x)
    return x


def _clip_unit(u: float) -> float:
    if not is_number(u) or math.isnan(u):
        raise invalid_value("u", "a number in [0, 1]", u)
    return min(max(float(u), 0.0), 1.0)


@dataclass(frozen=True)
class Domain(abc.ABC):
    """Base class of the values one parameter may take.

    When each method is called:

    * :meth:`contains` — when a space checks the parameters of a trial (``CompressionSpace.decode``).
    * :meth:`sample` — random search and tests; draws ``from_unit(rng.random())``.
    * :meth:`to_unit` / :meth:`from_unit` — space-filling designs map unit-cube points through ``from_unit``;
      predictors encode parameters with ``to_unit``. ``from_unit(to_unit(x)) == x`` for every contained ``x``
      (exactly for discrete domains, up to float rounding for :class:`Float`).
    * :meth:`project` — warm starts from another space: the nearest contained value.
    * :meth:`landmarks` — when a space validates a domain: if every landmark is valid, every value is.
    * :meth:`to_dict` / :meth:`from_dict` — space fingerprints, configs and study metadata.
    """

    type_name: ClassVar[str] = ""

    @abc.abstractmethod
    def contains(self, x: Any) -> bool:
        """Return True if ``x`` is a value of this domain (type included: ``4.0`` is not in ``Int(2, 8)``)."""

    @abc.abstractmethod
    def to_unit(self, x: Any) -> float:
        """Map a value to [0, 1] (numeric values outside the domain are projected first)."""

    @abc.abstractmethod
    def from_unit(self, u: float) -> Any:
        """Map ``u`` in [0, 1] (clipped) to a value of the domain; the inverse of :meth:`to_unit`."""

    @abc.abstractmethod
    def project(self, x: Any) -> Any:
        """Return the contained value nearest to ``x``; raise :class:`ConfigError` if there is none."""

    @abc.abstractmethod
    def landmarks(self) -> tuple[Any, ...]:
        """Values that, if all valid for a field, make every value of the domain valid for it."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The allowed-values phrase of an error message, e.g. ``in [0.0, 0.95]`` or ``one of 2, 4, 8``."""

    @property
    @abc.abstractmethod
    def is_constant(self) -> bool:
        """True when the domain has exactly one value (it is then applied, not searched)."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict with a ``type`` key; :meth:`Domain.from_dict` inverts it."""

    @property
    def constant_value(self) -> Any:
        """The single value of a constant domain."""
        if not self.is_constant:
            raise ValueError(f"{self!r} is not constant")
        return self.from_unit(0.5)

    def sample(self, rng: random.Random) -> Any:
        """Draw one value uniformly (log-uniformly for ``log=True``) with ``rng``."""
        return self.from_unit(rng.random())

    @staticmethod
    def from_dict(d: Mapping[str, Any], field: str = "domain") -> Domain:
        """Build a domain from :meth:`to_dict` output, e.g. ``{"type": "float", "low": 0, "high": 0.9}``.

        Args:
            d: The dict.
            field: Dotted path used in error messages, e.g. ``space.prune``.

        Raises:
            ConfigError: Unknown type or key, or invalid bounds/choices.
        """
        if not isinstance(d, Mapping):
            raise invalid_value(field, "a mapping with a 'type' key", d)
        types = {cls.type_name: cls for cls in (Float, Int, Ordinal, Categorical)}
        cls = types.get(d.get("type"))  # type: ignore[arg-type]
        if cls is None:
            raise unknown_key(f"{field}.type", str(d.get("type")), types)
        kwargs = {k: v for k, v in d.items() if k != "type"}
        allowed = [f.name for f in cls.__dataclass_fields__.values()]
        for key in kwargs:
            if key not in allowed:
                raise unknown_key(field, key, allowed, what="keys")
        for key in ("values", "choices"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise prefixed(err, field) from None
        except TypeError:
            raise invalid_value(field, f"a {cls.type_name} domain with keys {', '.join(allowed)}", d) from None


def _check_bounds(low: Any, high: Any, log: Any, integer: bool) -> None:
    check = is_int if integer else is_number
    what = "an integer" if integer else "a finite number"
    for name, v in (("low", low), ("high", high)):
        if not check(v) or not math.isfinite(v):
            raise invalid_value(name, what, v)
    if not isinstance(log, bool):
        raise invalid_value("log", "true or false", log)
    if low > high:
        raise invalid_value("low", f"at most high ({high!r})", low)
    if log and low <= 0:
        raise invalid_value("low", "> 0 when log is true", low)


@dataclass(frozen=True)
class Float(Domain):
    """Real numbers in ``[low, high]``, uniform or (``log=True``) log-uniform."""

    low: float
    high: float
    log: bool = False
    type_name: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        _check_bounds(self.low, self.high, self.log, integer=False)
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    @property
    def is_constant(self) -> bool:
        return self.low == self.high

    def contains(self, x: Any) -> bool:
        return is_number(x) and self.low <= x <= self.high

    def project(self, x: Any) -> float:
        if not is_number(x) or math.isnan(x):
            raise invalid_value("value", self.describe(), x)
        return min(max(float(x), self.low), self.high)

    def to_unit(self, x: Any) -> float:
        x = self.project(x)
        if self.is_constant:
            return 0.5
        if self.log:
            return (math.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> float:
        u = _clip_unit(u)
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        return min(max(x, self.low), self.high)

    def landmarks(self) -> tuple[float, ...]:
        return (self.low, self.high)

    def describe(self) -> str:
        return f"in [{self.low!r}, {self.high!r}]"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Int(Domain):
    """Integers in ``[low, high]`` (both included), uniform or (``log=True``) log-uniform."""

    low: int
    high: int
    log: bool = False
    type_name: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        _check_bounds(self.low, self.high, self.log, integer=True)
        object.__setattr__(self, "low", int(self.low))
        object.__setattr__(self, "high", int(self.high))

    @property
    def is_constant(self) -> bool:
        return self.low == self.high

    def contains(self, x: Any) -> bool:
        return is_int(x) and self.low <= x <= self.high

    def project(self, x: Any) -> int:
        if not is_number(x) or not math.isfinite(x):
            raise invalid_value("value", self.describe(), x)
        return min(max(int(round(x)), self.low), self.high)

    def _log_edges(self) -> tuple[float, float]:
        return math.log(self.low - 0.5), math.log(self.high + 0.5)  # low >= 1 when log is true

    def to_unit(self, x: Any) -> float:
        x = self.project(x)
        if self.log:
            a, b = self._log_edges()
            return (math.log(x) - a) / (b - a)
        return (x - self.low + 0.5) / (self.high - self.low + 1)

    def from_unit(self, u: float) -> int:
        u = _clip_unit(u)
        if self.log:
            a, b = self._log_edges()
            x = int(round(math.exp(a + u * (b - a))))
        else:
            x = self.low + int(u * (self.high - self.low + 1))
        return min(max(x, self.low), self.high)

    def landmarks(self) -> tuple[int, ...]:
        if self.high - self.low <= 64:
            return tuple(range(self.low, self.high + 1))
        return (self.low, self.high)

    def describe(self) -> str:
        return f"an integer in [{self.low}, {self.high}]"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "low": self.low, "high": self.high, "log": self.log}


def _check_choices(field: str, choices: Any, numeric: bool) -> tuple[Any, ...]:
    if isinstance(choices, list):
        choices = tuple(choices)
    if not isinstance(choices, tuple) or not choices:
        raise invalid_value(field, "a non-empty tuple", choices)
    for c in choices:
        ok = is_number(c) if numeric else (c is None or isinstance(c, (str, bool)) or is_number(c))
        if not ok or (is_number(c) and not math.isfinite(c)):
            allowed = "finite numbers" if numeric else "str, int, float, bool or None (finite numbers)"
            raise invalid_value(field, f"a tuple of {allowed}", choices)
    if len({(_kind(c), c) for c in choices}) != len(choices):
        raise invalid_value(field, "a tuple without duplicates", choices)
    return tuple(_py(c) for c in choices)


@dataclass(frozen=True)
class _Discrete(Domain):
    """Shared behaviour of finite domains: value ``i`` of ``n`` owns the unit bin ``[i/n, (i+1)/n)``."""

    @property
    def _items(self) -> tuple[Any, ...]:
        raise NotImplementedError

    @property
    def is_constant(self) -> bool:
        return len(self._items) == 1

    def contains(self, x: Any) -> bool:
        return any(_same(x, c) for c in self._items)

    def to_unit(self, x: Any) -> float:
        x = self.project(x)
        index = next(i for i, c in enumerate(self._items) if _same(x, c))
        return (index + 0.5) / len(self._items)

    def from_unit(self, u: float) -> Any:
        n = len(self._items)
        return self._items[min(int(_clip_unit(u) * n), n - 1)]

    def landmarks(self) -> tuple[Any, ...]:
        return self._items

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self._items)


@dataclass(frozen=True)
class Ordinal(_Discrete):
    """Ordered numeric choices, e.g. bit widths ``(2, 3, 4, 6, 8)``; stored sorted ascending, no duplicates."""

    values: tuple[float | int, ...]
    type_name: ClassVar[str] = "ordinal"

    def __post_init__(self) -> None:
        values = _check_choices("values", self.values, numeric=True)
        if any(a == b for a, b in zip(sorted(values), sorted(values)[1:])):  # 4 and 4.0
            raise invalid_value("values", "a tuple without duplicates", values)
        object.__setattr__(self, "values", tuple(sorted(values)))

    @property
    def _items(self) -> tuple[Any, ...]:
        return self.values

    def project(self, x: Any) -> float | int:
        if not is_number(x) or math.isnan(x):
            raise invalid_value("value", self.describe(), x)
        return min(self.values, key=lambda v: abs(v - x))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "values": list(self.values)}


@dataclass(frozen=True)
class Categorical(_Discrete):
    """Unordered choices of type str, int, float, bool or None."""

    choices: tuple[ChoiceType, ...]
    type_name: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", _check_choices("choices", self.choices, numeric=False))

    @property
    def _items(self) -> tuple[Any, ...]:
        return self.choices

    def project(self, x: Any) -> ChoiceType:
        for c in self.choices:
            if _same(x, c):
                return c
        raise invalid_value("value", self.describe(), x)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "choices": list(self.choices)}
