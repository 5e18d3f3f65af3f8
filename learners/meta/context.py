"""What a warm start knows of a task before its first trial: the predictor, the probes, the meta-features.

:func:`task_context` checks that the history can serve the search (its objectives, a non-empty history), loads
the pretrained predictor or fits one on a grown history (:func:`_predictor_for`), probes the teacher
(:func:`~.features.layer_sensitivity`, :func:`~.features.task_meta_features`), focuses the predictor on the tasks
of the history most like this one when it is set to (:meth:`~.predictors.GBMRetentionPredictor.focus`, opt-in)
and adapts it on the task's own rows in the history. Both warm starts build on it: the batch of :mod:`.propose`
and the sequential points of :mod:`.sequential`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metacompress.spaces import CompressionSpace, ConfigError, LayerInfo

from .history import History
from .size import SizeModel

__all__ = ["SUPPORTED_OBJECTIVES", "TaskContext", "predictor_plan", "task_context"]

#: Objectives a warm start can serve (accuracy is predicted, size is exact, the others follow size).
SUPPORTED_OBJECTIVES: tuple[str, ...] = ("accuracy", "size_bytes", "compression_ratio", "latency_ms", "bitops")


def _objective_problem(objectives: Mapping[str, str] | None) -> str | None:
    if objectives is None:
        return None
    if objectives.get("accuracy") != "maximize":
        return "the history predicts accuracy, and accuracy is not maximized"
    other = [key for key in objectives if key not in SUPPORTED_OBJECTIVES]
    if other:
        return f"the history has no {other[0]!r} outcome"
    return None


def _is_shipped(history: History) -> bool:
    """Whether ``history`` is the shipped meta-dataset alone (the pretrained predictor learned from exactly it)."""
    shipped = History.shipped()
    return len(history) == len(shipped) and history.tasks == shipped.tasks


def predictor_plan(history: History, kind: str | None = None) -> str:
    """In words, the predictor a warm start on ``history`` uses (what :func:`_predictor_for` does, without doing
    it)."""
    from .predictors import FLYWHEEL_TREES, default_kind  # noqa: PLC0415
    from .reptile import FLYWHEEL_EPOCHS  # noqa: PLC0415

    kind = kind or default_kind()
    name = {"gbm": "GBMRetentionPredictor", "reptile": "ReptilePredictor"}.get(kind, kind)
    if not len(history):
        return "none (an empty history: a cold start)"
    if _is_shipped(history):
        return f"the pretrained {name}"
    if kind == "reptile":
        return f"the pretrained {name}, meta-trained {FLYWHEEL_EPOCHS} more epochs on the {len(history)} rows"
    return (f"the pretrained {name}, its boosting continued on the {len(history)} rows "
            f"({FLYWHEEL_TREES} more iterations)")


def _predictor_for(history: History, kind: str | None) -> tuple[Any, str]:
    from .predictors import FLYWHEEL_TREES, default_kind, load_default_predictor, make_predictor  # noqa: PLC0415
    from .reptile import FLYWHEEL_EPOCHS, FLYWHEEL_META_LR  # noqa: PLC0415

    if _is_shipped(history):
        predictor = load_default_predictor(kind)
        return predictor, f"pretrained {type(predictor).__name__}"
    kind = kind or default_kind()
    X, y, groups = history.X(), history.y(), history.groups()
    if kind == "reptile":  # continue the pretrained meta-training on the grown history: seconds, not a refit
        predictor = load_default_predictor(kind).set_params(warm_start=True, meta_epochs=FLYWHEEL_EPOCHS,
                                                            meta_lr=FLYWHEEL_META_LR)
        predictor.fit(X, y, groups)
        return predictor, f"pretrained ReptilePredictor, meta-trained {FLYWHEEL_EPOCHS} more epochs on the history"
    pretrained = load_default_predictor(kind).set_params(warm_start=True)
    if pretrained._continues(X):  # boost the pretrained trees on the grown history: a second, not a refit
        pretrained.set_params(max_iter=pretrained.max_iter + FLYWHEEL_TREES)
        return _continued(pretrained, X, y, groups)
    predictor = make_predictor(kind)
    predictor.fit(X, y, groups)
    return predictor, f"{type(predictor).__name__} fit on the history"


#: Continued GBMs kept in the cache folder (the most recently used; a few hundred kB each).
CONTINUED_KEEP = 8


def _continued(pretrained: Any, X: Any, y: Any, groups: Any) -> tuple[Any, str]:
    """``pretrained`` (``warm_start`` set) boosted on a grown history's rows, or the same predictor as an earlier
    call saved it in the cache folder (``<cache>/predictors/<key>``: ``suggest`` then ``search``, and a resumed
    search, continue on an unchanged history).

    The key hashes the pretrained fit's digest, the history's rows, the predictor's params and scikit-learn's
    version; the entry is the safe format of :func:`~.predictors.save_predictor` (never a pickle), and a loaded entry
    must carry the digest of exactly these rows. The cache only saves time: an entry that is missing, damaged or
    unwritable means continuing here, as without it.
    """
    import sklearn  # noqa: PLC0415

    from metacompress.learners.teachers import resolve_cache_dir  # noqa: PLC0415

    from .predictors import load_predictor, rows_digest  # noqa: PLC0415

    source = "pretrained GBMRetentionPredictor, its boosting continued on the history"
    digest = rows_digest(X, y, groups)
    key = hashlib.sha256(json.dumps(
        {"pretrained": pretrained.fit_digest_, "rows": digest, "params": pretrained.get_params(),
         "sklearn": sklearn.__version__}, sort_keys=True, default=str).encode()).hexdigest()[:32]
    folder = resolve_cache_dir() / "predictors" / key
    if pretrained.fit_digest_ is not None and (folder / "gbm.json").is_file():
        try:
            cached = load_predictor(folder / "gbm.json")
        except ConfigError:
            cached = None
        if cached is not None and cached.fit_digest_ == digest:
            _touch(folder)
            return cached, f"{source} (read from the cache)"
    pretrained.fit(X, y, groups)
    if pretrained.fit_digest_ is not None:
        _store(pretrained, folder)
    return pretrained, source


def _touch(folder: Path) -> None:
    """Mark a cache entry as just used (its folder's mtime orders what :func:`_store` keeps)."""
    with contextlib.suppress(OSError):
        os.utime(folder)


def _store(predictor: Any, folder: Path) -> None:
    """Save ``predictor`` as the cache entry ``folder`` (written aside, then renamed into place) and drop all but
    the :data:`CONTINUED_KEEP` most recently used entries; a cache that cannot be written is left alone."""
    from .predictors import save_predictor  # noqa: PLC0415

    aside = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        aside = tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent)
        save_predictor(predictor, Path(aside) / "gbm.json")
        shutil.rmtree(folder, ignore_errors=True)  # a damaged entry under this key
        os.replace(aside, folder)
        aside = None
        entries = sorted((p for p in folder.parent.iterdir() if not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CONTINUED_KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass  # another process wrote the same entry meanwhile, or the folder is not writable: nothing lost
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@dataclass
class TaskContext:
    """What a warm start needs of a task: the (adapted) predictor, the probes, the meta-features, exact sizes."""

    predictor: Any
    layers: list[LayerInfo]
    sensitivity: dict[str, dict[str, float]]
    features: dict[str, float]
    size_model: SizeModel
    source: str


def task_context(
    space: CompressionSpace, task: Any, *, history: History, seed: int = 0,
    objectives: Mapping[str, str] | None = None, predictor: Any = None, kind: str | None = None,
) -> tuple[TaskContext | None, str]:
    """The predictor and probes of a warm start, or ``(None, "cold start: <why>")``.

    The second item describes the source in words (``"the pretrained ... (3984 rows ..., adapted on ...)"``).
    """
    from .features import layer_sensitivity, task_meta_features  # noqa: PLC0415

    problem = _objective_problem(objectives)
    if problem is None and not len(history):
        problem = f"the history is empty ({history.explain()})"
    source = type(predictor).__name__
    if problem is None and predictor is None:
        try:
            predictor, source = _predictor_for(history, kind)
        except ConfigError as exc:
            problem = f"no predictor ({exc})"
    if problem is not None:
        return None, f"cold start: {problem}"
    layers = list(space.layers)
    sensitivity = layer_sensitivity(task, layers, seed=seed)
    features = task_meta_features(task, seed=seed, layers=layers, sensitivity=sensitivity)
    focused = ""
    if getattr(predictor, "similarity", None) is not None and getattr(predictor, "rows_", None) is not None:
        predictor = predictor.focus(features)  # the history's tasks weighted by their likeness to this one
        focused = ", weighted towards the tasks most like it"
    named = history.subset([task.name]) if hasattr(predictor, "adapt") else History()
    own = named.same_model(features)  # a reused name is not the same task
    if len(own):
        predictor = predictor.adapt(own.X(), own.y())
    adapted = f", adapted on {len(own)} trials of {task.name}" if len(own) else ""
    if len(named) > len(own):
        adapted += (f", not on {len(named) - len(own)} trials of another model named {task.name!r} (give the task a "
                    "name of its own: task.name)")
    source = f"the {source} ({history.explain()}{focused}{adapted})"
    return TaskContext(predictor, layers, sensitivity, features, SizeModel(task.teacher, task.example_input(2)),
                       source), source
