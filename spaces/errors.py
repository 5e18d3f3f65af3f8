"""The one error type every part of metacompress raises on bad user input.

Messages follow a single template, ``The '<field>' value must be <allowed>. Got <value>.``, so that the CLI can
print them as one line and exit with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["MetacompressError", "ConfigError", "Terminated", "close_hint", "invalid_value", "unknown_key", "missing_key",
           "prefixed"]


class MetacompressError(Exception):
    """Base class of every error metacompress raises on purpose."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job) where metacompress ends the run like Ctrl-C: the CLI exits 143."""

    #: Set by :meth:`raise_for`: code that turns the interrupt into a plain ``KeyboardInterrupt`` on its way up (Ray's
    #: ``ray.wait`` does) loses its type, not the fact that SIGTERM caused it.
    received = False

    @classmethod
    def raise_for(cls, signum: int | None = None, frame: Any = None) -> None:
        """A SIGTERM handler: remember it, and raise :class:`Terminated` where the process is."""
        cls.received = True
        raise cls


class ConfigError(MetacompressError, ValueError):
    """A user-supplied value (config key, CLI flag, policy entry) is not allowed.

    Attributes:
        field: Dotted name of the offending field, e.g. ``prune.max`` or ``layers.conv1.bits``.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def invalid_value(field: str, allowed: str, got: Any) -> ConfigError:
    """Build the standard error: ``The 'prune.max' value must be in [0, 1). Got 1.2.``"""
    return ConfigError(f"The '{field}' value must be {allowed}. Got {got!r}.", field=field)


def unknown_key(field: str, got: str, choices: Iterable[str], *, what: str = "value") -> ConfigError:
    """Build the error for an unknown name, with a "did you mean" hint when one is close.

    ``what`` names what ``field`` is: ``value`` (a name given as a value), ``key`` (a key of a mapping, ``field``
    its dotted path) or ``keys`` (``field`` is the mapping whose keys must be ``choices``).
    """
    choices = sorted(str(c) for c in choices)
    shown = ", ".join(repr(c) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
    return ConfigError(f"The '{field}' {what} must be one of {shown}. Got {got!r}.{close_hint(got, choices)}",
                       field=field)


def close_hint(got: Any, choices: Iterable[str], show: Callable[[str], str] = str) -> str:
    """`` Did you mean 'x'?`` for the choice closest to ``got``, or ``""`` when none is close.

    ``show`` turns the closest choice into what the line names (the name ``trials`` compared, ``--trials`` shown).
    """
    close = difflib.get_close_matches(str(got), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {show(close[0])!r}?" if close else ""


def missing_key(field: str) -> ConfigError:
    """Build the error for a required value that was not given: ``The 'prune.conv1' value must be given. Got nothing.``"""
    return ConfigError(f"The '{field}' value must be given. Got nothing.", field=field)


def prefixed(error: ConfigError, prefix: str) -> ConfigError:
    """Return a copy of ``error`` whose field is nested under ``prefix``.

    Lets a nested validator report relative names (``low``) while the caller knows the full path
    (``space.prune``): the result reads ``The 'space.prune.low' value must be ...``.

    Args:
        error: The error raised by the nested validator.
        prefix: Dotted path of the enclosing value; an empty prefix returns ``error`` unchanged.
    """
    if not prefix:
        return error
    old = error.field
    new = f"{prefix}.{old}" if old else prefix
    message = str(error)
    if old and f"'{old}'" in message:
        message = message.replace(f"'{old}'", f"'{new}'", 1)
    return ConfigError(message, field=new)
