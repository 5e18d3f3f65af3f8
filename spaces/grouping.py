"""Layer grouping: which layers share one searched prune ratio and one bit width.

Three forms, all resolved by :func:`resolve_groups`:

* ``"per-layer"`` — one group per layer, named after the layer.
* ``"auto"`` — layers holding fewer than :data:`AUTO_SMALL_FRACTION` of all weight elements share one group
  named ``small``; the others keep a group each. With fewer than two small layers, or when every layer is small,
  it falls back to per-layer (merging one layer is pointless; merging all would leave nothing per layer).
* a mapping ``{group_name: regex}`` — ``re.fullmatch`` against layer names, first match wins; unmatched layers go
  to the group ``rest``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import invalid_value, unknown_key
from .layers import LayerInfo

__all__ = ["AUTO_SMALL_FRACTION", "GROUPING_MODES", "normalize_grouping", "resolve_groups"]

#: Share of the total weight elements under which ``"auto"`` merges a layer into the ``small`` group.
AUTO_SMALL_FRACTION = 0.02
#: The named grouping modes.
GROUPING_MODES: tuple[str, ...] = ("per-layer", "auto")

Grouping = str | dict[str, str]


def normalize_grouping(grouping: Any) -> Grouping:
    """Return ``grouping`` as a mode name or an ordered ``{group: regex}`` dict.

    Accepts a mode name, a mapping, or a sequence of ``(group, regex)`` pairs (the ``to_dict`` form).

    Raises:
        ConfigError: Unknown mode, empty mapping, non-string group name or regex, or a regex that does not compile.
    """
    if isinstance(grouping, str):
        if grouping not in GROUPING_MODES:
            raise unknown_key("space.grouping", grouping, GROUPING_MODES)
        return grouping
    if isinstance(grouping, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in grouping):
        grouping = {p[0]: p[1] for p in grouping}
    if not isinstance(grouping, Mapping) or not grouping:
        allowed = "'per-layer', 'auto' or a non-empty mapping of group name to regex"
        raise invalid_value("space.grouping", allowed, grouping)
    out: dict[str, str] = {}
    for name, pattern in grouping.items():
        if not isinstance(name, str) or not name:
            raise invalid_value("space.grouping", "keyed by non-empty group names", name)
        field = f"space.grouping.{name}"
        if not isinstance(pattern, str):
            raise invalid_value(field, "a regular expression (str)", pattern)
        try:
            re.compile(pattern)
        except re.error as err:
            raise invalid_value(field, f"a valid regular expression ({err})", pattern) from None
        out[name] = pattern
    return out


def resolve_groups(layers: Sequence[LayerInfo], grouping: Grouping) -> dict[str, tuple[str, ...]]:
    """Split ``layers`` into named groups, in a stable order.

    Args:
        layers: The space's layers.
        grouping: Output of :func:`normalize_grouping`.

    Returns:
        ``{group_name: layer names}``; every layer is in exactly one group, and no group is empty.

    Raises:
        ConfigError: A regex group that claims no layer (``space.grouping.<group>``).
    """
    if grouping == "per-layer":
        return {info.name: (info.name,) for info in layers}
    if grouping == "auto":
        return _auto_groups(layers)
    return _regex_groups(layers, dict(grouping))


def _auto_groups(layers: Sequence[LayerInfo]) -> dict[str, tuple[str, ...]]:
    total = sum(info.n_params for info in layers)
    small = [info.name for info in layers if info.n_params < AUTO_SMALL_FRACTION * total]
    if len(small) < 2 or len(small) == len(layers):
        return {info.name: (info.name,) for info in layers}
    names = {info.name for info in layers}
    label, i = "small", 1
    while label in names:  # a big layer called "small" keeps its name
        label, i = f"small_{i}", i + 1
    groups: dict[str, tuple[str, ...]] = {}
    for info in layers:
        if info.name in small:
            groups.setdefault(label, tuple(small))
        else:
            groups[info.name] = (info.name,)
    return groups


def _regex_groups(layers: Sequence[LayerInfo], grouping: dict[str, str]) -> dict[str, tuple[str, ...]]:
    members: dict[str, list[str]] = {name: [] for name in grouping}
    compiled = [(name, re.compile(pattern)) for name, pattern in grouping.items()]
    for info in layers:
        group = next((name for name, rx in compiled if rx.fullmatch(info.name)), "rest")
        members.setdefault(group, []).append(info.name)
    for name, names in members.items():
        if not names:
            allowed = "a regular expression matching at least one layer not claimed by an earlier group"
            raise invalid_value(f"space.grouping.{name}", allowed, grouping[name])
    return {name: tuple(names) for name, names in members.items()}
