"""MLflow tracking of a search: one parent run per study, one nested child run per trial.

Layout (DESIGN.md): the parent run has tags ``metacompress.study_name``, ``metacompress.role=parent`` + the caller's
(task, backend, warm start), the flattened config as params, and the summary/table/plots as artifacts. Each trial is
a child run (tags ``mlflow.parentRunId``, ``metacompress.trial_number``, ``metacompress.state``, ``pareto``) with its
params, final metrics (step 0) and per-epoch ``epoch/<name>`` histories. Pareto models are registered.

Resumable: :meth:`Tracker.start_parent` reuses the study's parent run, and :meth:`Tracker.log_trial` for a trial
already logged returns the existing child (one left ``RUNNING`` by a ``kill -9`` is completed, not duplicated).

Tracking server down: :meth:`Tracker.check_reachable` is called before the search and fails fast with a
``ConfigError`` (CLI exit 2). A failure *during* the search does not kill the search (the Optuna storage is the
source of truth): unless ``strict=True``, the tracker logs one warning and disables itself; re-running the same
command resumes the study and, since :meth:`Tracker.log_trial` is idempotent, backfills the missing children.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from metacompress.spaces.errors import invalid_value

from .checks import StoreUnreachable, write_problem
from .mlflow_entities import create_sqlite_store, log_torch_model, metrics_of, param_value, params_of

__all__ = ["Tracker", "NullTracker", "StoreUnreachable", "make_tracker", "flatten"]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
STUDY_TAG, ROLE_TAG, STATE_TAG = "metacompress.study_name", "metacompress.role", "metacompress.state"
TRIAL_TAG, PARENT_TAG = "metacompress.trial_number", "mlflow.parentRunId"
#: On a resumed parent run: the params whose value the resuming search changed (a param keeps its first value).
CHANGED_TAG = "metacompress.changed_on_resume"
_RUN_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}
_TERMINAL = {"FINISHED", "FAILED", "KILLED"}
_ENV_DEFAULTS = {  # applied with os.environ.setdefault when a Tracker is created
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys: ``{"space": {"bits": [4]}}`` -> ``{"space.bits": [4]}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _database_driver_problem(uri: str) -> str | None:
    """Why the SQLAlchemy driver of database URL ``uri`` does not import, or None (also for a non-database URI)."""
    try:
        from sqlalchemy.engine.url import make_url  # noqa: PLC0415

        dialect = make_url(uri).get_dialect()
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (file://, databricks): MLflow decides
        return None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return str(exc)
    return None


def _tracking_schemes() -> set[str]:
    """URI schemes this MLflow can track to (its tracking-store registry); empty when it cannot tell."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry  # noqa: PLC0415

        return set(_tracking_store_registry._registry)
    except (ImportError, AttributeError):  # a private registry: a later MLflow may move it, then MLflow decides
        return set()


def _is_file_store(uri: str) -> bool:
    """Whether MLflow reads ``uri`` as a local file store: ``file:...`` or a path without a scheme."""
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")  # ``C:\\mlruns`` parses as scheme c


def _soft(method: Callable[..., _T]) -> Callable[..., _T | None]:
    """Run ``method`` only while the tracker is enabled; in non-strict mode turn a failure into one warning."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> _T | None:
        if self.disabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if self.strict:
                raise
            self.disabled = True
            _LOG.warning("MLflow tracking at %s failed in %s (%r); it is off for the rest of this run. Re-run the "
                         "same command to resume and backfill.", self.tracking_uri, method.__name__, exc)
            return None

    return wrapper


def _sqlite_file(path: Path) -> bool:
    """A sqlite database, or an empty file (sqlite makes it one)."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return True  # unreadable: the access check names it
    return not head or head == b"SQLite format 3\x00"


def _other_tables(path: Path) -> set[str]:
    """The tables of the sqlite database ``path`` when it holds some but not MLflow's (``experiments``, ``runs``),
    else an empty set. Read-only: the file is not changed."""
    import sqlite3  # noqa: PLC0415

    if not path.is_file() or path.stat().st_size == 0:
        return set()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return set()  # unreadable or locked: the access check and MLflow say more
    return set() if not tables or {"experiments", "runs"} <= tables else tables


class Tracker:
    """Log one search to MLflow (parent run + a child run per trial + registered Pareto models).

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``, ...); ``None`` uses
            MLflow's own resolution (``MLFLOW_TRACKING_URI`` or its default).
        experiment_name: Created when missing. For sqlite stores a new experiment keeps its artifacts in
            ``mlruns/<experiment name>/`` next to the database file.
        strict: Raise logging errors instead of warning once and disabling tracking (tests use True).
    """

    def __init__(self, tracking_uri: str | None, experiment_name: str, *, strict: bool = False) -> None:
        import mlflow

        for key, value in _ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.tracking_uri: str = tracking_uri or mlflow.get_tracking_uri()
        self.experiment_name, self.strict, self.disabled = experiment_name, strict, False
        self.parent_run_id: str | None = None
        self.study_name: str | None = None
        self._experiment_id: str | None = None
        self._client: Any = None
        self._children: dict[int, tuple[str, str]] = {}  # trial number -> (run id, run status)

    @property
    def client(self) -> Any:
        """The ``mlflow.MlflowClient`` bound to :attr:`tracking_uri` (created on first use)."""
        if self._client is None:
            from mlflow import MlflowClient

            create_sqlite_store(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def check_reachable(self, timeout_s: float = 3.0, instead: str = "sqlite:///mlflow.db or none") -> None:
        """Fail fast when the tracking store cannot be used; an unreachable server's message offers ``instead``.

        ``http(s)://``: GET ``<uri>/health`` (served by ``mlflow server``); any HTTP answer, even 401 or 404 from a
        proxy, counts as reachable; a refused connection, DNS failure or no answer within ``timeout_s`` does not.
        ``sqlite:///``: the database's directory must exist, and the database (or, for a new one, its directory) be
        writable. Another URL: its scheme must be one MLflow tracks to, and a database's driver must import (a
        server that is down shows at the first write, which tracking survives). A file store (``file:``, a plain
        path): MLflow 3 refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is true. Other schemes are refused.

        Raises:
            ConfigError: naming ``tracking_uri``.
        """
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310
                    pass
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                error = invalid_value("tracking_uri", f"a reachable MLflow tracking server (no answer within "
                                      f"{timeout_s:g} s: {reason}; start one with `mlflow server` or pass "
                                      f"--tracking-uri {instead})", uri)
                raise StoreUnreachable(str(error), error.field) from None
        elif uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not db.parent.is_dir():
                raise invalid_value("tracking_uri", "a sqlite URL whose directory exists", uri)
            if db.exists() and not _sqlite_file(db):  # MLflow would retry creating its engine for minutes
                raise invalid_value("tracking_uri", "a sqlite URL naming a sqlite database file (this is a folder "
                                    "or another kind of file)", uri)
            other = _other_tables(db)
            if other:  # MLflow would add its ~70 tables to someone else's database (or fail on an Optuna one's)
                what = ("is an Optuna storage, a search's --storage" if "studies" in other else
                        f"holds another application's tables: {', '.join(sorted(other)[:3])}")
                raise invalid_value("tracking_uri", f"an MLflow store or a new sqlite file (this database {what})",
                                    uri)
            # sqlite writes a journal next to the database, so the directory must be writable too
            problem = write_problem(db.parent)
            if problem is not None or (db.exists() and not os.access(db, os.R_OK | os.W_OK)):
                raise invalid_value("tracking_uri", "a sqlite URL whose database and directory this user can write",
                                    uri + (f" ({problem})" if problem else ""))
        elif _is_file_store(uri):
            from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE  # noqa: PLC0415

            if not MLFLOW_ALLOW_FILE_STORE.get():
                raise invalid_value("tracking_uri", "a database or server store: MLflow 3 refuses file stores "
                                    "(use sqlite:///mlflow.db; `mlflow migrate-filestore` converts a file store, "
                                    "MLFLOW_ALLOW_FILE_STORE=true keeps using it)", uri)
        elif "://" in uri:  # a database store (postgresql://, mysql://, ...): its Python driver must import
            schemes = _tracking_schemes()
            scheme = urllib.parse.urlparse(uri).scheme.split("+")[0]
            if schemes and scheme not in schemes:
                others = ", ".join(f"{s}://" for s in sorted(schemes - {"", "file", "http", "https", "sqlite"}))
                raise invalid_value("tracking_uri", f"an MLflow tracking URI: http(s)://, sqlite:///, {others} or none",
                                    uri)
            driver = _database_driver_problem(uri)
            if driver is not None:
                raise invalid_value("tracking_uri", f"a database URL whose driver is installed ({driver})", uri)

    def _experiment(self) -> str:
        if self._experiment_id is not None:
            return self._experiment_id
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            self._experiment_id = exp.experiment_id
            return exp.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri[len("sqlite:///"):]).resolve()
            location = (db.parent / "mlruns" / re.sub(r"[^\w.-]+", "_", self.experiment_name)).as_uri()
        self._experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        return self._experiment_id

    def _search(self, filter_string: str) -> Iterator[Any]:
        token = None
        while True:
            page = self.client.search_runs([self._experiment()], filter_string=filter_string, max_results=1000,
                                           order_by=["attributes.start_time DESC"], page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _refresh_children(self) -> None:
        for run in self._search(f"tags.`{PARENT_TAG}` = {_quote(str(self.parent_run_id))}"):
            number = run.data.tags.get(TRIAL_TAG)
            if number is not None and int(number) not in self._children:
                self._children[int(number)] = (run.info.run_id, run.info.status)

    def start_parent(self, study_name: str, tags: Mapping[str, Any] | None = None,
                     params: Mapping[str, Any] | None = None) -> str | None:
        """Create, or resume, the parent run of ``study_name``; returns its run id (None when tracking is off).

        On resume, tags are overwritten, the run is set back to ``RUNNING``, and only params not logged before
        are added. MLflow forbids changing a param: a changed value (a larger ``n_trials``, another ``backend``)
        keeps its first value as the param, and the tag ``metacompress.changed_on_resume`` says what the resuming
        run changed (``n_trials: 5 -> 11``), so the params and the tags of one name do not contradict each other
        unexplained.
        """
        if self.disabled:
            return None
        from mlflow.entities import RunTag

        self.study_name = study_name
        found = next(iter(self._search(
            f"tags.`{STUDY_TAG}` = {_quote(study_name)} and tags.`{ROLE_TAG}` = 'parent'")), None)
        all_tags = {STUDY_TAG: study_name, ROLE_TAG: "parent", **{k: str(v) for k, v in (tags or {}).items()}}
        flat = flatten(params or {})
        if found is None:
            run = self.client.create_run(self._experiment(), tags=all_tags, run_name=study_name)
            self.parent_run_id = run.info.run_id
        else:
            self.parent_run_id = found.info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            old = found.data.params
            changed = sorted(k for k in flat if k in old and old[k] != param_value(flat[k]))
            if changed:
                _LOG.info("Resumed MLflow run %s keeps the first value of params %s.", self.parent_run_id, changed)
            all_tags[CHANGED_TAG] = "; ".join(f"{k}: {old[k]} -> {param_value(flat[k])}" for k in changed)[:5000]
            flat = {k: v for k, v in flat.items() if k not in old}
            self.client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
        self._log_params(self.parent_run_id, flat)
        self._children.clear()
        self._refresh_children()
        return self.parent_run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any], skip: int = 0) -> None:
        items = params_of(params)
        for start in range(skip, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("Tracker.start_parent() must be called first.")
        return self.parent_run_id

    @_soft
    def log_trial(self, number: int, params: Mapping[str, Any], metrics: Mapping[str, Any],
                  epoch_metrics: list[dict[str, Any]] | None = None, state: str = "COMPLETE",
                  reason: str | None = None) -> str:
        """Log trial ``number`` as a nested child run (idempotent); returns its run id (None: tracking off).

        Args:
            number: Optuna trial number.
            params: The trial's params (nested mappings are flattened to dotted keys).
            metrics: Final metrics, logged at step 0; non-numeric values are skipped.
            epoch_metrics: One dict per epoch, logged as ``epoch/<name>`` with step = the dict's ``epoch`` or
                its index.
            state: ``"COMPLETE"``, ``"FAIL"`` or ``"PRUNED"`` (run status FINISHED, FAILED, KILLED).
            reason: Failure reason, stored as tag ``metacompress.fail_reason``.
        """
        from mlflow.entities import RunTag

        parent = self._require_parent()
        if state not in _RUN_STATUS:
            raise invalid_value("state", "one of 'COMPLETE', 'FAIL', 'PRUNED'", state)
        existing = self._children.get(int(number))
        if existing is not None and existing[1] in _TERMINAL:
            return existing[0]
        tags = {PARENT_TAG: parent, TRIAL_TAG: str(int(number)), ROLE_TAG: "trial", STATE_TAG: state}
        if existing is None:
            run_id = self.client.create_run(self._experiment(), tags=tags, run_name=f"trial-{number}").info.run_id
            self._children[int(number)] = (run_id, "RUNNING")
        else:
            run_id = existing[0]
        if reason:
            tags["metacompress.fail_reason"] = str(reason)[:5000]
        flat = flatten(params)
        self.client.log_batch(run_id, metrics=metrics_of(metrics, epoch_metrics),
                              params=params_of(flat)[:100], tags=[RunTag(k, v) for k, v in tags.items()])
        self._log_params(run_id, flat, skip=100)
        self.client.set_terminated(run_id, status=_RUN_STATUS[state])
        self._children[int(number)] = (run_id, _RUN_STATUS[state])
        return run_id

    @_soft
    def mark_pareto(self, numbers: Iterable[int]) -> None:
        """Set tag ``pareto=true`` on the children of ``numbers`` and ``pareto=false`` on every other child."""
        from mlflow.entities import RunTag

        self._require_parent()
        self._refresh_children()
        chosen = {int(n) for n in numbers}
        for number, (run_id, _) in sorted(self._children.items()):
            self.client.log_batch(run_id, tags=[RunTag("pareto", "true" if number in chosen else "false")])

    @_soft
    def log_artifacts(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Upload files (or whole folders) to the parent run."""
        parent = self._require_parent()
        for path in map(Path, paths):
            if path.is_dir():
                self.client.log_artifacts(parent, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(parent, str(path))

    @_soft
    def log_pareto_model(self, number: int, model: Any, metrics: Mapping[str, Any], registered_model_name: str,
                         extra_artifacts: Iterable[str | os.PathLike[str]] = (), input_example: Any = None) -> str:
        """Log ``model`` under trial ``number``'s child run and register it; returns ``models:/<name>/<version>``.

        With a tensor ``input_example`` the model is saved in MLflow's safe ``pt2`` (``torch.export``) format
        with a signature; without one, or when export fails (custom fake-quant modules), it is pickled (MLflow's
        pickle warning is silenced: the model is ours). The metrics become tags of the new model version (with
        ``metacompress.trial_number``); ``extra_artifacts`` (e.g. the packed int8 export) go to ``export/``.
        """
        import mlflow

        self._require_parent()
        if int(number) not in self._children:
            self._refresh_children()
        if int(number) not in self._children:
            raise invalid_value("number", "a trial already logged with log_trial()", number)
        run_id = self._children[int(number)][0]
        with self._fluent_uri(), mlflow.start_run(run_id=run_id, nested=True), \
                contextlib.redirect_stderr(io.StringIO()):  # MLflow eprint()s "Created version ..." lines
            info = log_torch_model(model, registered_model_name, input_example)
        for path in extra_artifacts:
            self.client.log_artifact(run_id, str(path), artifact_path="export")
        version = str(info.registered_model_version)
        study = {STUDY_TAG: self.study_name} if self.study_name else {}  # versions of many studies share a name
        self.tag_model_version(registered_model_name, version, {TRIAL_TAG: str(number), **study, **metrics})
        return f"models:/{registered_model_name}/{version}"

    @_soft
    def tag_model_version(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Set the tags of registered model ``name``'s ``version`` (values as strings)."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    @_soft
    def tag_model_versions(self, name: str, key: str, values: Mapping[str, str]) -> None:
        """Set tag ``key`` of registered model ``name``'s versions: version -> value."""
        for version, value in values.items():
            self.client.set_model_version_tag(name, version, key, value)

    @contextlib.contextmanager
    def _fluent_uri(self) -> Iterator[None]:
        """Point MLflow's fluent API at this tracker's store for the duration of the block."""
        import mlflow

        previous = mlflow.get_tracking_uri()
        previous_registry = mlflow.get_registry_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)
            mlflow.set_registry_uri(previous_registry)

    @_soft
    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if status not in _TERMINAL:
            raise invalid_value("status", "one of 'FINISHED', 'FAILED', 'KILLED'", status)
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status=status)


class NullTracker(Tracker):
    """The tracker for ``tracking_uri: none``: the same methods, doing nothing (returning None), no MLflow import."""

    def __init__(self, tracking_uri: str | None = "none", experiment_name: str = "", **_: Any) -> None:
        self.tracking_uri, self.experiment_name, self.strict, self.disabled = "none", experiment_name, False, True
        self.parent_run_id = None
        self._client, self._experiment_id, self._children = None, None, {}

    def check_reachable(self, timeout_s: float = 3.0, instead: str = "") -> None:
        """Nothing to check."""


def make_tracker(tracking_uri: str | None, experiment_name: str, *, strict: bool = False) -> Tracker | NullTracker:
    """A :class:`NullTracker` when ``tracking_uri`` is ``"none"`` (any case), else a :class:`Tracker`."""
    if tracking_uri is not None and tracking_uri.strip().lower() == "none":
        return NullTracker(tracking_uri, experiment_name)
    return Tracker(tracking_uri, experiment_name, strict=strict)

