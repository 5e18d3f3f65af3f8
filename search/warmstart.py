"""Which points a search enqueues first: a JSON file of policies/params, the meta-learned predictor, or none."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from metacompress.learners import Task
from metacompress.spaces import CompressionPolicy, CompressionSpace, ConfigError, invalid_value

__all__ = ["history_store", "load_points", "resolve_warm_start"]

_LOG = logging.getLogger(__name__)


def load_points(path: str | Path, space: CompressionSpace) -> list[dict[str, Any]]:
    """Read a JSON list of points: each either space params or a flat policy dict (``layers.<name>.bits`` ...)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise invalid_value("warm_start.file", "a readable JSON file holding a list of policies", str(path)) from exc
    if isinstance(data, dict) and "pareto" in data:  # a previous summary.json: its Pareto policies
        data = [e["params"] for e in data["pareto"]]
    if not isinstance(data, list):
        raise invalid_value("warm_start.file", "a JSON list of policies or params", type(data).__name__)
    points = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise invalid_value(f"warm_start.file[{i}]", "a mapping", entry)
        try:
            if any(str(k).startswith("layers.") for k in entry):
                policy = CompressionPolicy.from_dict(entry, layer_names=space.layer_names)
                points.append(space.encode(policy, clip=True))
            else:
                space.decode(entry)
                points.append(dict(entry))
        except ConfigError as exc:
            raise ConfigError(f"warm_start.file[{i}]: {exc}", f"warm_start.file[{i}]") from exc
    return points


def history_store(tracking_uri: str | None) -> str | None:
    """The tracking URI to read the history from; ``None`` when there is nothing to read.

    A sqlite store that does not exist yet is skipped (reading it would create an empty database).
    """
    if not tracking_uri or tracking_uri == "none":
        return None
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return None
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return tracking_uri


def resolve_warm_start(
    mode: str, space: CompressionSpace, task: Task, *, n_points: int, seed: int, file: str | None = None,
    tracking_uri: str | None = None, objectives: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The points to enqueue and the summary's ``warm_start`` entry.

    Args:
        mode: ``auto`` (predictor proposals when a history exists), ``off``, or a path to a JSON file.
        space: The search space.
        task: The task (meta-features for the predictor).
        n_points: How many proposals.
        seed: Seed of the candidate pool.
        file: ``warm_start.file`` of the config (used when ``mode`` is ``auto`` and it is set).
        tracking_uri: MLflow store whose finished searches join the shipped meta-dataset (the flywheel).
        objectives: The search's objectives (a history for other objectives means a cold start).
    """
    if mode not in ("auto", "off"):
        file, mode = mode, "file"
    if mode == "off":
        return [], {"mode": "off", "n_points": 0}
    if file:
        points = load_points(file, space)[:n_points] if mode != "file" else load_points(file, space)
        return points, {"mode": "file", "n_points": len(points), "source": str(file)}
    from metacompress.learners.meta import History, warm_start_points

    history = History.collect(history_store(tracking_uri))
    points, reason = warm_start_points(space, task, history=history, k=n_points, seed=seed, objectives=objectives)
    if not points:
        _LOG.warning("%s", reason)
    return points, {"mode": "auto", "n_points": len(points), "reason": reason}
