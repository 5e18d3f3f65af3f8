"""The trial history a predictor learns from: rows of task meta-features ⊕ policy encoding ⊕ outcome metrics.

Rows come from the meta-dataset shipped with the package (:meth:`History.shipped`), from any CSV written by
:meth:`History.to_csv`, and from MLflow (:meth:`History.from_mlflow`): every finished search whose parent run
carries a ``meta.json`` artifact adds its finished trials, so each search makes the next one warmer. Corrupt or
incompatible rows are skipped and counted by reason (:attr:`History.skipped`), never raised.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metacompress.spaces import CompressionPolicy, ConfigError, invalid_value

from .encoding import ENCODING_DEFAULTS, ENCODING_NAMES
from .features import FEATURE_NAMES
from .proxy import PROXY_NAME, TUNED_PROXY_NAME

__all__ = [
    "History", "INPUT_NAMES", "MEASURED_NAMES", "OUTCOME_NAMES", "SCHEMA_VERSION", "SHIPPED_CSV", "make_row",
    "data_path",
]

_LOG = logging.getLogger(__name__)

#: Version of the row layout; rows (and ``meta.json`` files) of another version are skipped.
SCHEMA_VERSION = 1
#: Inputs measured per policy (:mod:`.proxy`), the last input columns, each costlier than the one before; NaN
#: where not measured (older searches, candidates a warm start did not probe).
MEASURED_NAMES: tuple[str, ...] = (PROXY_NAME, TUNED_PROXY_NAME)
#: Predictor inputs, in column order.
INPUT_NAMES: tuple[str, ...] = (*FEATURE_NAMES, *ENCODING_NAMES, *MEASURED_NAMES)
#: Outcome columns; ``retention = accuracy / teacher_accuracy`` is the predictor's target.
OUTCOME_NAMES: tuple[str, ...] = (
    "accuracy", "teacher_accuracy", "retention", "size_bytes", "compression_ratio", "latency_ms",
)
_TEXT = ("task", "study", "policy")
#: File name of the meta-dataset that ships with the package (under ``learners/meta/data/``).
SHIPPED_CSV = "metadataset.csv.gz"
#: The last read of the shipped meta-dataset (``"read"``): its file's (path, mtime, size), rows and skip counts.
_SHIPPED: dict[str, Any] = {}
_COLUMNS: tuple[str, ...] = ("schema", *_TEXT, *INPUT_NAMES, *OUTCOME_NAMES)


def data_path(name: str) -> Path:
    """Path of a file shipped in ``metacompress/learners/meta/data``."""
    return Path(str(resources.files("metacompress.learners.meta").joinpath("data", name)))


def make_row(
    task: str, study: str, meta_features: Mapping[str, float], encoding: Mapping[str, float],
    metrics: Mapping[str, float], teacher_accuracy: float, policy: CompressionPolicy | None = None,
) -> dict[str, Any]:
    """One history row from a finished trial (see :data:`INPUT_NAMES`, :data:`OUTCOME_NAMES`).

    The measured inputs (:data:`MEASURED_NAMES`) are read from ``metrics``; NaN when the trial did not record them.
    """
    acc = float(metrics["accuracy"])
    row: dict[str, Any] = {"schema": SCHEMA_VERSION, "task": task, "study": study,
                           "policy": json.dumps(policy.to_dict()) if policy is not None else ""}
    row.update({k: meta_features[k] for k in FEATURE_NAMES})
    row.update({k: encoding[k] for k in ENCODING_NAMES})
    row.update({k: float(metrics.get(k, float("nan"))) for k in MEASURED_NAMES})
    row.update({"accuracy": acc, "teacher_accuracy": float(teacher_accuracy),
                "retention": acc / float(teacher_accuracy) if teacher_accuracy else float("nan"),
                "size_bytes": float(metrics.get("size_bytes", float("nan"))),
                "compression_ratio": float(metrics.get("compression_ratio", float("nan"))),
                "latency_ms": float(metrics.get("latency_ms", float("nan")))})
    return row


def _row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a row cannot be used (``None`` when it can)."""
    try:
        schema = int(float(row["schema"]))
    except (TypeError, ValueError):
        return "schema not a number"
    if schema != SCHEMA_VERSION:
        return f"schema {schema} (expected {SCHEMA_VERSION})"
    if not isinstance(row["task"], str) or not row["task"]:
        return "no task name"
    for name in (*FEATURE_NAMES, *ENCODING_NAMES, "accuracy", "teacher_accuracy", "size_bytes"):
        value = row[name]
        if not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
            return f"non-finite {name}"
    for name in MEASURED_NAMES:  # NaN = not measured
        if math.isinf(float(row[name])) or float(row[name]) < 0:
            return f"invalid {name}"
    if not 0.0 <= float(row["accuracy"]) <= 1.0 or not 0.0 < float(row["teacher_accuracy"]) <= 1.0:
        return "accuracy outside [0, 1]"
    if float(row["size_bytes"]) <= 0:
        return "size_bytes <= 0"
    return None


#: Meta-features that say which model and data a row's task had (:meth:`History.same_model`).
_MODEL_FEATURES = ("input_ndim", "log_input_numel", "log_n_classes", "log_n_params", "n_layers")


class History:
    """Rows of (task meta-features, policy encoding, outcomes), with the count of rows that were skipped.

    Args:
        frame: A table with the columns of :func:`make_row`; unusable rows are dropped and counted. Encoding
            columns added since a table was written are filled with :data:`~.encoding.ENCODING_DEFAULTS`.
        skipped: Counts of rows already skipped upstream, by reason.
    """

    def __init__(self, frame: pd.DataFrame | None = None, skipped: Mapping[str, int] | None = None) -> None:
        self.skipped: Counter[str] = Counter(dict(skipped or {}))
        frame = pd.DataFrame(columns=list(_COLUMNS)) if frame is None else frame
        absent = {k: v for k, v in ENCODING_DEFAULTS.items() if k not in frame.columns}
        if absent and len(frame):  # rows written before these encoding columns existed
            frame = frame.assign(**absent)
        optional = ("policy", "latency_ms", "study", *MEASURED_NAMES)
        missing = [c for c in _COLUMNS if c not in frame.columns and c not in optional]
        if missing and len(frame):
            self.skipped[f"missing column {missing[0]}"] += len(frame)
            frame = frame.iloc[0:0]
        frame = frame.reindex(columns=list(_COLUMNS))
        numeric = frame.drop(columns=list(_TEXT)).apply(pd.to_numeric, errors="coerce")
        frame = pd.concat([frame[list(_TEXT)].fillna("").astype(str), numeric], axis=1)[list(_COLUMNS)]
        problems = [_row_problem(r) for r in frame.to_dict("records")]
        for p in problems:
            if p is not None:
                self.skipped[p] += 1
        keep = np.array([p is None for p in problems], dtype=bool)
        self._frame = frame[keep].reset_index(drop=True)
        self._frame["retention"] = self._frame["accuracy"] / self._frame["teacher_accuracy"]

    # ------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], skipped: Mapping[str, int] | None = None) -> History:
        """Build from :func:`make_row` dicts."""
        return cls(pd.DataFrame(list(rows)), skipped)

    @classmethod
    def from_csv(cls, path: str | Path) -> History:
        """Read a CSV written by :meth:`to_csv`; a missing or unreadable file gives an empty history (counted).

        Raises:
            ConfigError: ``path`` is not a string or path.
        """
        if not isinstance(path, (str, Path)):
            raise invalid_value("history", "a path to a CSV file", path)
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except FileNotFoundError:
            return cls(skipped={f"no file {path}": 1})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            return cls(skipped={f"unreadable CSV ({type(exc).__name__})": 1})
        return cls(frame)

    @classmethod
    def shipped(cls) -> History:
        """The meta-dataset that ships with the package (``experiments/build_metadataset.py`` writes it).

        Read and checked once per process while the file is unchanged (a warm start asks for it several times;
        each read takes about half a second); every call returns its own :class:`History` of the same rows.
        """
        path = data_path(SHIPPED_CSV)
        try:
            stat = path.stat()
            key: tuple[str, int, int] | None = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None
        last = _SHIPPED.get("read")
        if key is None or last is None or last[0] != key:
            read = cls.from_csv(path)
            last = _SHIPPED["read"] = (key, read._frame, dict(read.skipped))  # one assignment: thread-safe
        out = cls.__new__(cls)  # the checked rows as they are: no History method changes its frame in place
        out._frame, out.skipped = last[1], Counter(last[2])
        return out

    @classmethod
    def from_mlflow(cls, tracking_uri: str | None, experiment_names: Iterable[str] | None = None) -> History:
        """Read every finished search logged to MLflow (see :mod:`.mlflow_source` for the layout it expects)."""
        from .mlflow_source import read_mlflow  # noqa: PLC0415 (mlflow is heavy)

        rows, skipped = read_mlflow(tracking_uri, experiment_names)
        return cls.from_rows(rows, skipped)

    @classmethod
    def collect(cls, tracking_uri: str | None = None, experiment_names: Iterable[str] | None = None) -> History:
        """The shipped meta-dataset plus every finished search in the tracking store (the flywheel).

        A tracking store that cannot be read adds nothing but a skip reason.
        """
        history = cls.shipped()
        if tracking_uri is not None and tracking_uri != "none":
            try:
                history = history.concat(cls.from_mlflow(tracking_uri, experiment_names))
            except ConfigError:  # down, refusing, or not an MLflow store (read_mlflow says which)
                history.skipped[f"tracking store {tracking_uri} unreadable"] += 1
            except (OSError, ImportError) as exc:
                history.skipped[f"tracking store {tracking_uri} unreadable ({type(exc).__name__})"] += 1
        return history

    # ------------------------------------------------------------------------------------------------ access
    def concat(self, *others: History) -> History:
        """A new history holding the rows (and skip counts) of ``self`` and ``others``."""
        frames = [h._frame for h in (self, *others) if len(h)]
        skipped: Counter[str] = Counter()
        for h in (self, *others):
            skipped.update(h.skipped)
        return History(pd.concat(frames, ignore_index=True) if frames else None, skipped)

    def __len__(self) -> int:
        return len(self._frame)

    def __repr__(self) -> str:
        return f"History({len(self)} rows, {len(self.tasks)} tasks, {self.n_skipped} skipped)"

    @property
    def frame(self) -> pd.DataFrame:
        """A copy of the rows."""
        return self._frame.copy()

    @property
    def n_skipped(self) -> int:
        """Number of rows (or sources) skipped, all reasons together."""
        return int(sum(self.skipped.values()))

    @property
    def tasks(self) -> list[str]:
        """Task names, sorted."""
        return sorted(self._frame["task"].unique().tolist())

    def X(self) -> np.ndarray:  # noqa: N802 (scikit-learn naming)
        """``(n, len(INPUT_NAMES))`` predictor inputs (NaN where a measured input was not recorded)."""
        return self._frame[list(INPUT_NAMES)].to_numpy(dtype=np.float64)

    def y(self) -> np.ndarray:
        """Accuracy retention (student / teacher accuracy) of every row."""
        return self._frame["retention"].to_numpy(dtype=np.float64)

    def groups(self) -> np.ndarray:
        """The task name of every row (the meta-learning episodes)."""
        return self._frame["task"].to_numpy(dtype=object)

    def summary(self) -> pd.DataFrame:
        """One row per task (its name the index, sorted): ``rows``, ``studies``, ``median_retention``,
        ``best_retention``, ``measured`` and ``tuned`` (the shares of rows that recorded the measured proxy and
        the tuned proxy)."""
        columns = ["rows", "studies", "median_retention", "best_retention", "measured", "tuned"]
        if not len(self):
            return pd.DataFrame(columns=columns, index=pd.Index([], name="task"))
        by = self._frame.groupby("task", sort=True)
        return pd.DataFrame({"rows": by.size(), "studies": by["study"].nunique(),
                             "median_retention": by["retention"].median(), "best_retention": by["retention"].max(),
                             "measured": by[PROXY_NAME].apply(lambda s: float(s.notna().mean())),
                             "tuned": by[TUNED_PROXY_NAME].apply(lambda s: float(s.notna().mean()))})[columns]

    def subset(self, tasks: Iterable[str]) -> History:
        """The rows of the given tasks."""
        return History(self._frame[self._frame["task"].isin(list(tasks))].reset_index(drop=True))

    def same_model(self, features: Mapping[str, float]) -> History:
        """The rows whose task has the model and data shape of ``features`` (a task's meta-features): input rank
        and size, classes, parameters and layers. Two tasks of one name can be different models (a factory's own
        name, reused); their trials teach nothing about each other."""
        keep = np.ones(len(self._frame), dtype=bool)
        for name in _MODEL_FEATURES:
            if name in self._frame.columns and name in features:
                keep &= np.isclose(self._frame[name].to_numpy(dtype=np.float64), float(features[name]),
                                   rtol=0.0, atol=1e-4)  # logs and counts; older rows kept 6 significant digits
        return History(self._frame[keep].reset_index(drop=True))

    def to_csv(self, path: str | Path) -> None:
        """Write the rows as CSV (floats with 10 significant digits: sizes stay exact); gzipped, with a fixed
        header time so equal rows give equal bytes, when ``path`` ends in ``.gz``."""
        compression = {"method": "gzip", "mtime": 0} if str(path).endswith(".gz") else None
        self._frame.to_csv(path, index=False, float_format="%.10g", compression=compression)

    def explain(self) -> str:
        """One line: rows, tasks and the main skip reasons."""
        reasons = ", ".join(f"{n}× {r}" for r, n in self.skipped.most_common(3))
        return f"{len(self)} rows of {len(self.tasks)} tasks" + (f" ({self.n_skipped} skipped: {reasons})"
                                                                  if self.skipped else "")
