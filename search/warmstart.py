"""Which points a search enqueues first: a JSON file of policies/params, the meta-learned predictor, or none."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from metacompress.learners import Task
from metacompress.spaces import CompressionPolicy, CompressionSpace, ConfigError, invalid_value

from .config import warn_once
from .study import ATTR_WARM, ATTR_WARM_SOURCE, counted_trials

__all__ = ["ATTR_INDEX", "ATTR_PREDICTED", "SequentialWarmStart", "check_warm_start_mode", "enqueue_next_warm_point",
           "history_store", "load_points", "policies_file", "resolve_warm_start", "resumed_warm_start"]

#: Trial user attributes of a sequential warm point: its candidate index and the predictor's retention.
ATTR_INDEX, ATTR_PREDICTED = "metacompress.warm_index", "metacompress.warm_predicted"
#: The retention the proposer expected of a warm point when it chose it (its model's, shifted by the residuals so
#: far and clipped to [0, 1]); ``ATTR_PREDICTED`` is the model's own, which the residuals are computed against.
ATTR_EXPECTED = "metacompress.warm_expected"

_LOG = logging.getLogger(__name__)


def load_points(path: str | Path, space: CompressionSpace) -> list[dict[str, Any]]:
    """Read a JSON list of points: each either space params, a flat policy dict (``layers.<name>.bits`` ...), or
    an entry holding its params under ``params`` (``metacompress suggest --json``; a ``summary.json``, whose
    Pareto entries are read)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise invalid_value("warm_start.file", "a readable JSON file holding a list of policies", str(path)) from exc
    if isinstance(data, dict) and "pareto" in data:  # a previous summary.json: its Pareto policies
        data = data["pareto"]
    if not isinstance(data, list):
        raise invalid_value("warm_start.file", "a JSON list of policies or params", type(data).__name__)
    points, moved = [], {}
    for i, entry in enumerate(data):
        if isinstance(entry, dict) and isinstance(entry.get("params"), dict):  # suggest --json, summary.json
            entry = entry["params"]
        if not isinstance(entry, dict):
            raise invalid_value(f"warm_start.file[{i}]", "a mapping", entry)
        try:
            if any(str(k).startswith("layers.") for k in entry):
                policy = CompressionPolicy.from_dict(entry, layer_names=space.layer_names)
                points.append(space.encode(policy, clip=True))
                now, was = space.decode(points[-1]).to_dict(), policy.to_dict()
                moved[i] = sorted({_field(k) for k in now if now[k] != was.get(k)})
            else:
                space.decode(entry)
                points.append(dict(entry))
        except ConfigError as exc:
            raise ConfigError(f"warm_start.file[{i}]: {exc}", f"warm_start.file[{i}]") from exc
    changed = {i: fields for i, fields in moved.items() if fields}
    if changed:  # a policy of another space (a wider search's summary.json) runs as its nearest one in this space
        fields = sorted(set().union(*changed.values()))
        warn_once(_LOG, f"warm_start.file: {len(changed)} of {len(points)} policies of {path} run as the nearest "
                        f"policy this space holds ({', '.join(fields[:6])}{' ...' if len(fields) > 6 else ''} "
                        "changed)")
    return points


def _field(key: str) -> str:
    """``layers.fc1.bits`` -> ``bits``: what a policy key sets."""
    return key.rsplit(".", 1)[-1] if key.startswith("layers.") else key


def history_store(tracking_uri: str | None) -> str | None:
    """The tracking URI to read the history from; ``None`` when there is nothing to read.

    A sqlite store that does not exist yet, or is an empty file, is skipped (reading it would create a database).
    """
    if not tracking_uri or tracking_uri == "none":
        return None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file() or db.stat().st_size == 0:
            return None
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return tracking_uri


@dataclass
class SequentialWarmStart:
    """Warm points enqueued one at a time, each against the observed front (:mod:`metacompress.learners.meta.
    sequential`): what :func:`resolve_warm_start` returns instead of a list when ``sequential=True``.

    Attributes:
        proposer: A :class:`~metacompress.learners.meta.sequential.SequentialProposer`.
        k: How many warm points in all.
        reference: The teacher's metrics (``accuracy``, ``size_bytes``): retention and size ratio of a trial.
        done: Set once all ``k`` exist (or a proposal failed): later asks skip reading the study.
        first: Fixed points enqueued once before the sequential ones (a retrain's previous Pareto policies); they
            run first, and the sequential points are chosen against the front they observed.
    """

    proposer: Any
    k: int
    reference: dict[str, float]
    done: bool = False
    first: list[dict[str, Any]] = field(default_factory=list)


def enqueue_next_warm_point(study: optuna.Study, plan: SequentialWarmStart) -> bool:
    """Enqueue the next sequential warm point when it is due; returns whether one was enqueued.

    Due when nothing is waiting (file points, retried trials run first) and fewer than ``plan.k`` distinct warm
    points exist. Everything comes from the study (finished trials, running warm trials, the indices and
    predictions stored with each warm trial), so a resumed search goes on where it stopped. Call it under the
    budget lock: two workers must not enqueue the same step.
    """
    if plan.done:
        return False
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    warm = [t for t in trials if ATTR_INDEX in t.user_attrs]
    taken = sorted({int(t.user_attrs[ATTR_INDEX]) for t in warm})
    if len(taken) >= plan.k:
        plan.done = True
        return False
    acc, size = float(plan.reference["accuracy"]), float(plan.reference["size_bytes"])
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("metrics")]
    observed = [(t.user_attrs["metrics"]["accuracy"] / acc, t.user_attrs["metrics"]["size_bytes"] / size)
                for t in done]
    residuals = [t.user_attrs["metrics"]["accuracy"] / acc - float(t.user_attrs[ATTR_PREDICTED])
                 for t in done if ATTR_INDEX in t.user_attrs]
    pending = [int(t.user_attrs[ATTR_INDEX]) for t in warm if t.state == TrialState.RUNNING]
    try:
        index, params, predicted = plan.proposer.next(observed, residuals, taken, pending)
    except Exception as exc:  # noqa: BLE001 - a failed proposal ends the warm start, never the search
        _LOG.warning("warm start stopped after %d points: %s: %s", len(taken), type(exc).__name__, exc)
        plan.done = True
        return False
    study.enqueue_trial(params, user_attrs={ATTR_WARM_SOURCE: "auto", ATTR_INDEX: index,
                                            ATTR_PREDICTED: predicted["model_retention"],
                                            ATTR_EXPECTED: predicted["accuracy_retention"]})
    return True


def resumed_warm_start(study: optuna.Study, n_trials: int, k: int, *, sequential: bool) -> dict[str, Any] | None:
    """The summary's ``warm_start`` entry of a resumed study that needs no new proposals, else None.

    No proposals are needed when the budget is spent, or when the study already holds its warm start (the batch is
    enqueued once per study; sequential points are done once ``k`` exist). Fitting the predictor then would cost
    seconds and announce points that never run.
    """
    warm = [t for t in study.get_trials(deepcopy=False) if ATTR_WARM_SOURCE in t.user_attrs]
    if sequential:
        n_warm = len({t.user_attrs[ATTR_INDEX] for t in warm if ATTR_INDEX in t.user_attrs})
        complete = n_warm >= k
    else:
        n_warm, complete = len(warm), bool(study.user_attrs.get(ATTR_WARM))
    done = len(counted_trials(study))  # a trial left running by a stopped search runs again: it is not done
    if done < n_trials and not complete:
        return None
    mode = study.user_attrs.get(ATTR_WARM) or ("auto" if n_warm else "off")
    reason = (f"resumed: {done} of {n_trials} trials finished, nothing left to run (raise --trials to go on)"
              if done >= n_trials else f"resumed: the study's {n_warm} warm-start points already exist")
    return {"mode": mode, "n_points": n_warm, "reason": reason}


def policies_file(mode: str, file: str | None) -> str | None:
    """The policies file a warm start reads: ``--warm-start FILE`` (``mode``), else ``warm_start.file`` with mode
    ``auto``; None with ``off`` or no file."""
    return mode if mode not in ("auto", "off") else file if mode == "auto" else None


def check_warm_start_mode(mode: str) -> None:
    """``--warm-start``: ``auto``, ``off`` or the path of a JSON file of policies (read later, by
    :func:`load_points`), so a mistyped mode is named as such rather than as a missing file.

    Raises:
        ConfigError: naming ``warm_start``.
    """
    if mode not in ("auto", "off") and not Path(mode).is_file():
        raise invalid_value("warm_start", "auto, off or the path of a JSON file of policies", mode)


def resolve_warm_start(
    mode: str, space: CompressionSpace, task: Task, *, n_points: int, seed: int, file: str | None = None,
    tracking_uri: str | None = None, objectives: dict[str, str] | None = None, sequential: bool = False,
    reference: dict[str, float] | None = None, batch_size: int = 64,
) -> tuple[list[dict[str, Any]] | SequentialWarmStart, dict[str, Any]]:
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
        sequential: With ``auto``, return a :class:`SequentialWarmStart` (points chosen one at a time against the
            observed front: what a search on either backend runs) instead of a list (the batch, chosen up front:
            what ``metacompress suggest`` shows).
        reference: The teacher's metrics (required with ``sequential``).
        batch_size: The search's fine-tuning batch size (with ``seed``, the sequential warm start's tuned proxy
            replays the first steps of the trial a candidate would run).
    """
    if mode == "off":
        return [], {"mode": "off", "n_points": 0}
    file = policies_file(mode, file)
    if file:
        points = load_points(file, space)[:n_points] if mode == "auto" else load_points(file, space)
        info = {"mode": "file", "n_points": len(points), "source": str(file),
                "reason": f"warm start: {len(points)} points from {file}, run first"}
        return points, info | ({} if points else {"reason": f"cold start: {file} holds no policies"})
    from metacompress.learners.meta import History, warm_start_points

    if sequential and not all((reference or {}).get(key) for key in ("accuracy", "size_bytes")):
        raise invalid_value("reference", "the teacher's metrics with accuracy and size_bytes", reference)
    history = History.collect(history_store(tracking_uri))
    if sequential:
        from metacompress.learners.meta.sequential import sequential_for_task

        proposer, source = sequential_for_task(space, task, history=history, seed=seed, objectives=objectives,
                                               batch_size=batch_size)
        if proposer is None:
            _LOG.warning("%s", source)
            return [], {"mode": "auto", "n_points": 0, "reason": source}
        reason = f"warm start: {n_points} points, one at a time against the observed front, from {source}"
        return SequentialWarmStart(proposer, n_points, reference), {"mode": "auto", "n_points": n_points,
                                                                    "reason": reason, "sequential": True}
    points, reason = warm_start_points(space, task, history=history, k=n_points, seed=seed, objectives=objectives,
                                       batch_size=batch_size)
    if not points:
        _LOG.warning("%s", reason)
    return points, {"mode": "auto", "n_points": len(points), "reason": reason}
