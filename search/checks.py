"""Field checks of the experiment YAML: each takes the dotted field name and the user's value, and returns the
value (normalized) or raises :class:`~metacompress.spaces.errors.ConfigError` naming the field and what is allowed.

A config section is a dataclass whose fields carry their check in their metadata (:func:`option`, :func:`section`);
:func:`validate` checks a mapping key by key against them, so an unknown key is named with the allowed ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metacompress.spaces.errors import ConfigError, invalid_value, unknown_key

__all__ = [
    "StoreUnreachable",
    "Check", "FloatRange", "IntRange", "boolean", "choice", "mapping", "number", "option", "section", "string",
    "subset", "validate", "value_range", "write_problem", "writable_folder",
]


class StoreUnreachable(ConfigError):
    """A server the command needs did not answer (the tracking server, the Optuna database): bad input to a search
    (exit 2), but maybe only down for a while to a scheduled ``retrain``, which exits 1 (retry) on it."""

Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class FloatRange:
    """A closed float interval ``[low, high]``, sampled on a log scale when ``log`` is true."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """A closed integer interval ``[low, high]``."""

    low: int
    high: int


def number(kind: str = "float", lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
            hi_open: bool = False, nullable: bool = False, allow: Sequence[int] = ()) -> Check:
    """A check for an int (``kind="int"``) or float within bounds; ``allow`` lists extra accepted ints."""
    if hi == math.inf:
        bounds = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    want = f"{'an integer' if kind == 'int' else 'a number'} {bounds}" + "".join(f" or {a}" for a in allow)
    want += " or null" if nullable else ""

    def check(name: str, v: Any) -> Any:
        if (v is None and nullable) or (type(v) is int and v in allow):
            return v
        typed = isinstance(v, int if kind == "int" else (int, float)) and not isinstance(v, bool)
        if not typed or not lo <= v <= hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise invalid_value(name, want, v)
        return float(v) if kind == "float" else int(v)

    return check


def boolean(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise invalid_value(name, "true or false", v)


def string(nullable: bool = False, pattern: re.Pattern[str] | None = None, want: str = "a non-empty string") -> Check:
    def check(name: str, v: Any) -> str | None:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v.strip() or (pattern is not None and not pattern.match(v)):
            raise invalid_value(name, want + (" or null" if nullable else ""), v)
        return v

    return check


def choice(*choices: str) -> Check:
    def check(name: str, v: Any) -> str:
        if v not in choices:
            raise unknown_key(name, v, choices)
        return v

    return check


def mapping(name: str, v: Any) -> Mapping[str, Any]:
    if isinstance(v, Mapping):
        return v
    raise invalid_value(name, "a mapping", v)


def option(default: Any, check: Check, *, factory: bool = False) -> Any:
    """A dataclass field with a default and the ``check`` that validates user values for it."""
    return field(**{"default_factory" if factory else "default": default}, metadata={"check": check})


def validate(name: str, raw: Any, cls: type) -> dict[str, Any]:
    """Check mapping ``raw`` key by key against the checks in ``cls``'s field metadata."""
    checks = {f.name: f.metadata["check"] for f in dataclasses.fields(cls) if "check" in f.metadata}
    values = {}
    for key, value in ({} if raw is None else mapping(name or "config", raw)).items():
        dotted = f"{name}.{key}" if name else str(key)
        if key not in checks:
            raise unknown_key(dotted, key, checks, what="key")
        values[key] = checks[key](dotted, value)
    return values


def section(cls: type) -> Any:
    """A dataclass field holding a nested section ``cls`` (default: all of its defaults)."""
    return option(cls, lambda name, raw: cls(**validate(name, raw, cls)), factory=True)


def value_range(bound: Check, *, is_float: bool = True) -> Check:
    """A check for ``{low, high[, log]}`` (or a scalar = fixed value) whose ends pass ``bound``."""
    keys = ("low", "high", "log") if is_float else ("low", "high")

    def check(name: str, v: Any) -> FloatRange | IntRange:
        raw = v if isinstance(v, Mapping) else {"low": v, "high": v}
        for key in raw:
            if key not in keys:
                raise unknown_key(f"{name}.{key}", key, keys)
        low, high = bound(f"{name}.low", raw.get("low")), bound(f"{name}.high", raw.get("high"))
        if high < low:
            raise invalid_value(f"{name}.high", f">= {name}.low ({low:g})", raw["high"])
        if not is_float:
            return IntRange(low, high)
        log = boolean(f"{name}.log", raw.get("log", False))
        if log and low <= 0:
            raise invalid_value(f"{name}.low", "> 0 when log is true", raw["low"])
        return FloatRange(low, high, log)

    return check


def subset(allowed: Sequence[Any], *, nullable: bool = False, sort: bool = False) -> Check:
    want = "a non-empty list drawn from [" + ", ".join(map(str, allowed)) + "]" + (" or null" if nullable else "")

    def check(name: str, v: Any) -> tuple[Any, ...] | None:
        if v is None and nullable:
            return None
        if not isinstance(v, (list, tuple)) or not v:
            raise invalid_value(name, want, v)
        for item in v:
            if type(item) is not type(allowed[0]) or item not in allowed:
                raise invalid_value(name, want, item)
        return tuple(sorted(set(v)) if sort else dict.fromkeys(v))

    return check


def write_problem(folder: str | Path) -> str | None:
    """Why no file can be created in the existing ``folder`` (None: one can), found by creating one: permission
    bits say nothing to root, and some file systems (``/proc``, a read-only mount) refuse every write."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def writable_folder(name: str, path: str | Path) -> Path:
    """Check, before any work, that the folder ``path`` can be created (parents too) and written.

    The folders it had to create to find out are removed again: a command that fails later (a tracking server
    down, a bad Ray address) leaves no empty folder behind; each writer creates it when it writes.

    Raises:
        ConfigError: naming ``name``.
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise invalid_value(name, "a folder that can be created and written",
                                f"{path} ({exc.strerror or type(exc).__name__})") from None
        problem = write_problem(path)
        if problem is not None:
            raise invalid_value(name, "a folder this user can write", f"{path} ({problem})")
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):  # another process may have written into it meanwhile
                folder.rmdir()
    return path
