"""Where it runs, locally: worker loops over one Optuna study (ask -> objective -> tell).

Each worker takes the budget lock, checks what is left, asks for a trial (which becomes ``RUNNING`` before the lock
is released, so parallel workers never overshoot the budget), runs it with Optuna's heartbeat, and tells the
result. The trial's metrics, per-epoch history, policy and exported artefact path are stored as trial user
attributes: the study is the single source of truth that MLflow is synced from.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from .objective import Objective, TrialFailed, TrialOutcome
from .study import remaining_budget, storage_file

__all__ = ["file_lock", "lock_path", "record_outcome", "run_worker", "run_trial"]

try:  # the heartbeat thread Optuna's own optimize() uses; keeps a killed worker's trial detectable as stale
    from optuna.storages._heartbeat import get_heartbeat_thread
except ImportError:  # pragma: no cover - older/newer Optuna without it
    def get_heartbeat_thread(trial_id: int, storage: Any) -> contextlib.AbstractContextManager:  # type: ignore[misc]
        return contextlib.nullcontext()


def lock_path(storage_url: str, study_name: str, kind: str) -> Path:
    """A lock file per (storage, study), in the user cache. A sqlite or journal storage is known by its file's
    resolved path, so ``sqlite:///s.db`` and ``sqlite:////abs/s.db`` naming one file share a lock."""
    file = storage_file(storage_url)
    where = f"file:{file.resolve()}" if file is not None else storage_url
    key = hashlib.sha1(f"{where}|{study_name}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("METACOMPRESS_CACHE", Path.home() / ".cache" / "metacompress")) / "locks"
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{study_name[:40].replace('/', '_')}-{key}.{kind}.lock"


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An ``fcntl`` lock; yields False (without waiting) when ``blocking=False`` and another process holds it."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record_outcome(
    study: optuna.Study, trial_id: int, outcome: TrialOutcome, artifact: str | None, objectives: Mapping[str, str]
) -> list[float]:
    """Store a finished trial's results as user attributes; returns the objective values in order."""
    attrs = {
        "metrics": outcome.metrics,
        "history": outcome.history,
        "policy": outcome.policy.to_dict(),
        "timing": outcome.timing,
        "artifact": artifact,
    }
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial_id, key, value)
    return [float(outcome.metrics[k]) for k in objectives]


def run_trial(
    study: optuna.Study, trial: Trial, objective: Objective, objectives: Mapping[str, str], artifact_dir: Path | None
) -> FrozenTrial:
    """Run one asked trial to the end (complete or failed) and return its frozen record."""
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            outcome = objective(trial.params)
            artifact = None
            if artifact_dir is not None:
                artifact = str(artifact_dir / f"trial-{trial.number}.mcz")
                objective.save(outcome, artifact)
            values = record_outcome(study, trial._trial_id, outcome, artifact, objectives)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values)
    return study._storage.get_trial(trial._trial_id)


def run_worker(
    study: optuna.Study,
    objective: Objective,
    n_trials: int,
    objectives: Mapping[str, str],
    distributions: Mapping[str, optuna.distributions.BaseDistribution],
    budget_lock: Path,
    *,
    artifact_dir: Path | None = None,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    before_ask: Callable[[optuna.Study], Any] | None = None,
) -> int:
    """Run trials until the study's budget is used up; returns how many this worker ran.

    ``before_ask`` runs under the budget lock before each ask (the sequential warm start enqueues its next point
    there, so no two workers enqueue the same step).
    """
    ran = 0
    while True:
        with file_lock(budget_lock):
            if remaining_budget(study, n_trials) <= 0:
                return ran
            if before_ask is not None:
                before_ask(study)
            trial = study.ask(dict(distributions))
        frozen = run_trial(study, trial, objective, objectives, artifact_dir)
        ran += 1
        if on_trial_end is not None:
            on_trial_end(frozen)
