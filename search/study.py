"""What to try: the Optuna study behind every search — storage, sampler, resume and warm start.

Both backends share one study (Ray Tune through ``OptunaSearch`` on the same storage), so local and cluster runs
add to one history. The study remembers the search space's fingerprint, the objectives and the teacher's
reference metrics; reopening it with another space or other objectives is refused, never overwritten.

Resume: a trial left ``RUNNING`` by a killed process is failed and re-queued with the same parameters through
Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, then marked ``interrupted`` so it does not
count against the budget. The budget counts finished trials (complete, or failed for a reason of their own).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from metacompress.spaces import ConfigError, invalid_value, unknown_key

from .checks import StoreUnreachable

__all__ = [
    "SAMPLERS",
    "check_setup",
    "counted_trials",
    "enqueue_points",
    "make_sampler",
    "make_storage",
    "open_study",
    "recover_interrupted",
    "remaining_budget",
    "storage_file",
    "storage_folder",
    "study_line",
]

SAMPLERS = ("tpe", "nsga2", "gp", "random")
ATTR_SPACE = "metacompress.space_fingerprint"
ATTR_OBJECTIVES = "metacompress.objectives"
ATTR_REFERENCE = "metacompress.teacher"
ATTR_INTERRUPTED = "metacompress.interrupted"
ATTR_WARM = "metacompress.warm_start_done"
#: What a study's trials ran with, by config field (the task's data and teacher, the space's bounds, the
#: fine-tuning's seed and batch size): a resume with other values would mix trials that cannot share one front.
ATTR_SETUP = "metacompress.setup"
#: How the study's trials were timed (``learners.measure.LATENCY_TIMING``); absent in studies from before.
ATTR_TIMING = "metacompress.latency_timing"
#: Trial user attribute of an enqueued warm-start point: where it came from (``auto``, ``file``...).
ATTR_WARM_SOURCE = "metacompress.warm_start"

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and the retry callback are Optuna's documented resume mechanism; their "experimental" notices and
# the ask/tell heartbeat notice are expected here and would only clutter the progress bar.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def make_sampler(name: str, seed: int | None, n_startup_trials: int = 8) -> optuna.samplers.BaseSampler:
    """The sampler named in the config (multivariate TPE with constant liar for parallel workers)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=n_startup_trials)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup_trials))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise unknown_key("sampler", name, SAMPLERS)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats for URLs, a journal file for ``*.log`` paths or ``journal:///path``."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    try:
        folder = storage_folder(url)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        if _is_journal(url):
            backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal://"))
            return optuna.storages.JournalStorage(backend)
        return optuna.storages.RDBStorage(url, heartbeat_interval=5, grace_period=20,
                                          heartbeat_stale_trial_callback=retry,
                                          engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # a bad URL, a missing driver, sqlalchemy's OperationalError: unreachable database
        driver = ("; the PostgreSQL driver: pip install 'metacompress[postgres]'" if isinstance(exc, ImportError)
                  and url.startswith("postgresql") else "")
        error = invalid_value("storage", f"a reachable Optuna storage (RDB URL, *.log journal file; here: "
                              f"{_cause(exc)}{driver})", _without_password(url))
        if _server_down(url, exc):  # a database server that may only be down for a while: retrain retries
            raise StoreUnreachable(str(error), error.field) from exc
        raise error from exc


def _server_down(url: str, exc: BaseException) -> bool:
    """Whether ``exc`` says a database server did not answer (not a bad URL, a missing driver or a local file)."""
    from sqlalchemy.exc import OperationalError  # noqa: PLC0415

    return isinstance(exc, OperationalError) and not url.startswith("sqlite") and not _is_journal(url)


def _cause(exc: BaseException) -> str:
    """The first line of what went wrong, the database driver's own message where sqlalchemy wraps one."""
    inner = getattr(exc, "orig", None) or exc
    text = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {text[:160]}" if text else type(inner).__name__


def _is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".log", ".journal"))


def storage_file(url: str) -> Path | None:
    """The local file of a storage URL (sqlite or journal; None for a database server)."""
    if _is_journal(url):
        return Path(url.removeprefix("journal://")).expanduser()
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser()
    return None


def storage_folder(url: str) -> Path | None:
    """The folder :func:`storage_file` lies in (None for a database server); :func:`make_storage` creates it when
    it is missing."""
    file = storage_file(url)
    return None if file is None else file.parent


def study_line(study: optuna.Study, n_trials: int, storage: str, created_folder: Path | None = None) -> str:
    """One line saying whether a search starts a new study or resumes one, and where it lives: a mistyped
    ``--storage`` or ``--study-name`` starts a new study, which this line makes visible before any training."""
    done = len(counted_trials(study))
    where = _without_password(storage)
    if created_folder is not None:
        where += f" (created {created_folder})"
    if not study.get_trials(deepcopy=False):
        return f"study {study.study_name!r}: new, in {where}"
    if done >= n_trials:
        return (f"study {study.study_name!r}: {done} trials finished, the budget of {n_trials} is spent (nothing to "
                f"run), in {where}")
    return (f"study {study.study_name!r}: resuming with {done} of {n_trials} trials finished "
            f"({n_trials - done} to run), in {where}")


def _without_password(url: str) -> str:
    """A storage URL fit to print: a database server's password masked."""
    if storage_folder(url) is not None:
        return url
    try:
        from sqlalchemy.engine import make_url  # noqa: PLC0415

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy parses: print no part of it that could hold a secret
        return url.split("@")[-1]


def _engine_kwargs(url: str) -> dict[str, Any]:
    # Several worker processes write one sqlite file: wait for the lock instead of failing at once.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def open_study(
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    objectives: Mapping[str, str],
    sampler: optuna.samplers.BaseSampler,
    fingerprint: str,
    setup: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create the study or load it to resume; refuse one made for another space, other objectives or another
    ``setup`` (config field -> value; a study from before it was recorded takes the resuming one's)."""
    store = make_storage(storage) if isinstance(storage, str) else storage
    directions = list(objectives.values())
    try:
        study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler)
    except KeyError:
        study = optuna.create_study(study_name=study_name, storage=store, sampler=sampler, directions=directions)
        study.set_user_attr(ATTR_SPACE, fingerprint)
        study.set_user_attr(ATTR_OBJECTIVES, dict(objectives))
        if setup is not None:
            study.set_user_attr(ATTR_SETUP, _as_stored(setup))
        return study
    if study.user_attrs.get(ATTR_SPACE) != fingerprint:
        raise ConfigError(
            f"The 'study_name' value must name a study with this search space (it was made for another space or "
            f"model; choose a new --study-name). Got {study_name!r}.", "study_name")
    if study.user_attrs.get(ATTR_OBJECTIVES) != dict(objectives):
        raise ConfigError(
            f"The 'study_name' value must name a study with the objectives "
            f"{study.user_attrs.get(ATTR_OBJECTIVES)}. Got {study_name!r} with {dict(objectives)}.", "study_name")
    if setup is not None:
        _check_setup(study, _as_stored(setup))
    return study


def check_setup(storage: str, study_name: str, setup: Mapping[str, Any]) -> None:
    """Refuse, before the teacher is loaded, to resume a study whose trials ran with another ``setup`` (see
    :func:`open_study`, which checks again); nothing to check for a new study (nor a file created for it)."""
    file = storage_file(storage)
    if file is not None and not file.exists():
        return
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    except KeyError:
        return
    _check_setup(study, _as_stored(setup), record=False)


def _as_stored(setup: Mapping[str, Any]) -> dict[str, Any]:
    """``setup`` as the study stores it (JSON: tuples become lists), so that a comparison is exact."""
    return json.loads(json.dumps(dict(setup), default=str))


def _check_setup(study: optuna.Study, setup: dict[str, Any], record: bool = True) -> None:
    """Refuse a ``setup`` that differs from the study's, naming the first field that does; a study from before
    setups were recorded takes this one (``record``, once its space and objectives have passed)."""
    stored = study.user_attrs.get(ATTR_SETUP)
    if stored is None:
        if record:
            study.set_user_attr(ATTR_SETUP, setup)
        return
    for field, value in setup.items():
        if field in stored and stored[field] != value:
            raise ConfigError(
                f"The '{field}' value must be {stored[field]!r}, as when study {study.study_name!r} began (its "
                f"trials ran with it; a new --study-name starts a study with another). Got {value!r}.", field)


def _interrupted(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get(ATTR_INTERRUPTED))


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count against the budget (complete, or failed for their own reason)."""
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if not _interrupted(t)]


def remaining_budget(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: the budget less counted and running trials."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return n_trials - len(counted_trials(study)) - running


def recover_interrupted(study: optuna.Study) -> int:
    """Fail and re-queue every ``RUNNING`` trial; call only when no worker of this study is alive.

    Returns:
        How many trials were re-queued.
    """
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        retry(study, study._storage.get_trial(t._trial_id))  # queues a copy (user attrs too): mark it after
        study._storage.set_trial_user_attr(t._trial_id, ATTR_INTERRUPTED, True)
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        n += 1
    if n:
        logging.getLogger(__name__).warning("re-queued %d interrupted trial(s)", n)
    return n


def enqueue_points(study: optuna.Study, points: Sequence[Mapping[str, Any]], source: str) -> int:
    """Enqueue warm-start points once per study (a resumed study does not enqueue them again)."""
    if study.user_attrs.get(ATTR_WARM) or not points:
        return 0
    for p in points:
        study.enqueue_trial(dict(p), user_attrs={ATTR_WARM_SOURCE: source}, skip_if_exists=True)
    study.set_user_attr(ATTR_WARM, source)
    return len(points)
