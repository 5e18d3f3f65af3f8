"""Pareto fronts and hypervolume over trial metrics.

Raw metrics (``accuracy`` in [0, 1], ``size_bytes``, ``latency_ms``, ``bitops``, ``compression_ratio``) are first
mapped by :func:`normalize` to a *minimization* vector relative to the uncompressed teacher, so that one
hypervolume number is comparable across tasks and model sizes:

=====================  =========================================  ========  =========
objective              normalized value                           clip      reference
=====================  =========================================  ========  =========
``accuracy``           ``1 - accuracy / teacher.accuracy``        [0, 1]    1
``size_bytes``         ``size_bytes / teacher.size_bytes``        [0, 1]    1
``latency_ms``         ``latency_ms / teacher.latency_ms``        [0, 2]    2
``bitops``             ``bitops / teacher.bitops``                [0, 1]    1
``compression_ratio``  ``teacher.compression_ratio / ratio``      [0, 1]    1
=====================  =========================================  ========  =========

The teacher's own ``compression_ratio`` is 1 when absent, so ``compression_ratio`` normalizes to the same number as
``size_bytes`` (``ratio = teacher_size / size``); it exists for users who prefer to state the goal as a ratio.
A student more accurate than its teacher clips to 0 (no bonus); latency may be up to 2x the teacher's (fake-quant
overhead on CPU) before it clips.

:data:`REFERENCE_POINT` is each objective's clip upper bound. Hence, on ``(accuracy, size_bytes)``, a model
identical to the teacher maps to ``(0, 1)`` and contributes a hypervolume of 0, and a lossless model 16x smaller
maps to ``(0, 1/16)`` and contributes ``1 * (1 - 1/16) = 0.9375``. The maximum possible hypervolume is the product
of the reference coordinates (1, or 2 with latency).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from metacompress.spaces.errors import invalid_value, unknown_key

__all__ = [
    "OBJECTIVE_DIRECTIONS",
    "REFERENCE_POINT",
    "check_objectives",
    "objective_directions",
    "pareto_front",
    "normalize",
    "hypervolume",
    "hypervolume_history",
    "max_hypervolume",
]

#: The natural optimization direction of every known objective.
OBJECTIVE_DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "size_bytes": "minimize",
    "latency_ms": "minimize",
    "bitops": "minimize",
    "compression_ratio": "maximize",
}

#: Hypervolume reference point per objective, in normalized (minimization) space: the clip upper bound.
REFERENCE_POINT: dict[str, float] = {
    "accuracy": 1.0,
    "size_bytes": 1.0,
    "latency_ms": 2.0,
    "bitops": 1.0,
    "compression_ratio": 1.0,
}


def check_objectives(field: str, value: Any) -> dict[str, str]:
    """Validate the config's ``objectives``: a mapping ``{name: direction}`` or a list of names.

    Every name must be known, its direction must be its natural one (:data:`OBJECTIVE_DIRECTIONS`; the
    normalization below depends on it), and ``accuracy`` must be present.

    Raises:
        ConfigError: naming ``field`` (or ``field.<name>``).
    """
    if isinstance(value, (list, tuple)):
        value = {name: OBJECTIVE_DIRECTIONS.get(name, "minimize") for name in value}
    if not isinstance(value, Mapping):
        raise invalid_value(field, "a mapping {objective: maximize|minimize} or a list of objectives", value)
    out = {}
    for name, direction in value.items():
        if name not in OBJECTIVE_DIRECTIONS:
            raise unknown_key(field, name, OBJECTIVE_DIRECTIONS)
        if direction != OBJECTIVE_DIRECTIONS[name]:
            raise invalid_value(f"{field}.{name}", repr(OBJECTIVE_DIRECTIONS[name]), direction)
        out[str(name)] = str(direction)
    if "accuracy" not in out:
        raise invalid_value(field, "a mapping that includes 'accuracy'", value)
    return out


def max_hypervolume(objectives: Mapping[str, str] | Sequence[str]) -> float:
    """The largest hypervolume ``objectives`` admit: the product of their :data:`REFERENCE_POINT` coordinates
    (1, or 2 with ``latency_ms``)."""
    return math.prod(REFERENCE_POINT.get(name, 1.0) for name in objectives)


def objective_directions(objectives: Mapping[str, str]) -> list[str]:
    """Optuna study directions (``"maximize"``/``"minimize"``) in the order of ``objectives``."""
    return [str(objectives[name]) for name in objectives]


def _vector(point: Mapping[str, float] | None, names: Sequence[str]) -> list[float] | None:
    """The raw values of ``names`` in ``point``; None when any is missing or not finite."""
    if point is None:
        return None
    try:
        values = [float(point[name]) for name in names]
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def pareto_front(points: Sequence[Mapping[str, float] | None], objectives: Mapping[str, str]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Args:
        points: One metrics mapping per trial. ``None`` entries and points with a missing or non-finite objective
            (failed trials) are never on the front.
        objectives: ``{name: "maximize" | "minimize"}``.

    Returns:
        Sorted indices into ``points``. Of exact duplicates only the first is kept.
    """
    import moocore
    import numpy as np

    names = list(objectives)
    valid = [(i, v) for i, p in enumerate(points) if (v := _vector(p, names)) is not None]
    if not valid:
        return []
    data = np.asarray([v for _, v in valid], dtype=float)
    maximise = [objectives[n] == "maximize" for n in names]
    mask = moocore.is_nondominated(data, maximise=maximise, keep_weakly=False)
    return [i for (i, _), keep in zip(valid, mask) if keep]


def _ratio(name: str, value: float, teacher: Mapping[str, float], default: float | None = None) -> float:
    ref = teacher.get(name, default)
    if ref is None or not math.isfinite(float(ref)) or float(ref) <= 0:
        raise invalid_value(f"teacher.{name}", "a positive number", ref)
    return value / float(ref)


def normalize(metrics: Mapping[str, float], teacher: Mapping[str, float], objectives: Mapping[str, str]) -> list[float]:
    """Map raw metrics to the teacher-relative minimization vector described in the module docstring.

    Args:
        metrics: The trial's metrics; must hold every objective.
        teacher: The teacher's metrics (``accuracy``, ``size_bytes``, ...; ``compression_ratio`` defaults to 1).
        objectives: Objective names (their order is the vector's order).

    Returns:
        One value per objective, each in ``[0, REFERENCE_POINT[name]]``.

    Raises:
        ConfigError: A metric is missing or not finite, or a teacher value is not positive.
    """
    out = []
    for name in objectives:
        raw = metrics.get(name)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise invalid_value(f"metrics.{name}", "a finite number", raw)
        if name == "accuracy":
            value = 1.0 - _ratio(name, raw, teacher)
        elif name == "compression_ratio":
            value = math.inf if raw <= 0 else 1.0 / _ratio(name, raw, teacher, default=1.0)
        elif name in REFERENCE_POINT:
            value = _ratio(name, raw, teacher)
        else:
            raise invalid_value("objectives", "keys among " + ", ".join(REFERENCE_POINT), name)
        out.append(min(max(value, 0.0), REFERENCE_POINT[name]))
    return out


def _normalized(points: Sequence[Mapping[str, float] | None], teacher: Mapping[str, float],
                objectives: Mapping[str, str]) -> list[list[float]]:
    names = list(objectives)
    return [normalize(p, teacher, objectives) for p in points if _vector(p, names) is not None]


def _hv(vectors: list[list[float]], objectives: Mapping[str, str]) -> float:
    import moocore
    import numpy as np

    if not vectors:
        return 0.0
    ref = [REFERENCE_POINT[name] for name in objectives]
    return float(moocore.hypervolume(np.asarray(vectors, dtype=float), ref=ref))


def hypervolume(points: Sequence[Mapping[str, float] | None], teacher: Mapping[str, float],
                objectives: Mapping[str, str]) -> float:
    """Hypervolume of ``points`` in normalized space against :data:`REFERENCE_POINT`.

    ``None`` entries and points with a missing or non-finite objective (failed trials) are skipped.
    """
    return _hv(_normalized(points, teacher, objectives), objectives)


def hypervolume_history(points_in_trial_order: Sequence[Mapping[str, float] | None], teacher: Mapping[str, float],
                        objectives: Mapping[str, str]) -> list[float]:
    """Running hypervolume after each trial (anytime performance).

    Args:
        points_in_trial_order: Metrics per trial; ``None`` (failed or pruned trial) carries the previous value.
        teacher: The teacher's metrics.
        objectives: ``{name: direction}``.

    Returns:
        A list as long as ``points_in_trial_order``; non-decreasing; starts at 0 before any complete trial.
    """
    import moocore
    import numpy as np

    names = list(objectives)
    front: list[list[float]] = []
    history: list[float] = []
    current = 0.0
    for point in points_in_trial_order:
        if _vector(point, names) is not None:
            front.append(normalize(point, teacher, objectives))  # type: ignore[arg-type]
            mask = moocore.is_nondominated(np.asarray(front, dtype=float), keep_weakly=False)
            front = [v for v, keep in zip(front, mask) if keep]
            current = _hv(front, objectives)
        history.append(current)
    return history
