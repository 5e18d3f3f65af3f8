"""Read finished searches from an MLflow tracking store as history rows.

Layout read (written by ``metacompress.search``): a parent run per search, tagged ``metacompress.role=parent``,
with an artifact ``meta.json`` =

.. code-block:: json

    {"schema": 1, "task": "digits-cnn", "meta_features": {"<FEATURE_NAMES>": 0.0},
     "layers": [{"name": "...", "kind": "...", "n_params": 0, "shape": [], "structured": true}],
     "sensitivity": {"<layer>": {"prune50": 0.0, "bits4": 0.0, "...": 0.0}},
     "teacher": {"accuracy": 0.98, "size_bytes": 123456, "latency_ms": 0.4}}

and a nested child run per trial (tag ``mlflow.parentRunId``, ``metacompress.role=trial``, status ``FINISHED``)
whose params are ``CompressionPolicy.to_dict()`` (strings, converted back here) and whose metrics hold
``accuracy``, ``size_bytes`` and ``compression_ratio`` (``latency_ms`` optional).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from metacompress.spaces import POLICY_SCALARS, CompressionPolicy, ConfigError, LayerInfo, invalid_value

from .encoding import encode_policy
from .features import FEATURE_NAMES

__all__ = ["read_mlflow", "policy_from_params", "meta_artifact", "META_ARTIFACT"]

#: Name of the parent-run artifact holding the task's meta-features, layers, probes and teacher metrics.
META_ARTIFACT = "meta.json"
_ROLE, _PARENT = "metacompress.role", "mlflow.parentRunId"
_CAUSE_CHARS = 240  # of MLflow's message in the one-line error of a store that cannot be read


def _convert(key: str, value: str) -> Any:
    if key.endswith(".prune") or key in ("kd_lambda", "temperature", "lr", "feature_beta", "prox_mu"):
        return float(value)
    if key.endswith(".bits") or key == "epochs":
        return int(float(value))
    if key == "act_bits":
        return None if value in ("None", "none", "") else int(float(value))
    return value


def policy_from_params(params: Mapping[str, str], layer_names: Iterable[str]) -> CompressionPolicy:
    """Rebuild a policy from MLflow params (strings); keys other than policy keys are ignored.

    Raises:
        ConfigError: A value that does not convert or is not allowed.
        ValueError: A number that does not parse.
    """
    keep = {k: _convert(k, v) for k, v in params.items()
            if k in POLICY_SCALARS or (k.startswith("layers.") and k.endswith((".prune", ".bits")))}
    return CompressionPolicy.from_dict(keep, layer_names)


def meta_artifact(task: Any, layers: Sequence[LayerInfo], teacher: Mapping[str, float], *, seed: int = 0
                  ) -> dict[str, Any]:
    """The JSON-safe content of a search's ``meta.json`` (merge extra keys freely; these are the ones read).

    Args:
        task: The :class:`~metacompress.learners.Task`.
        layers: The space's layers (``space.layers``).
        teacher: The teacher's metrics (``accuracy``, ``size_bytes``, ``latency_ms``).
        seed: Seed of the sensitivity probes.
    """
    from .features import layer_sensitivity, task_meta_features  # noqa: PLC0415

    sensitivity = layer_sensitivity(task, layers, seed=seed)
    features = task_meta_features(task, seed=seed, layers=layers, sensitivity=sensitivity)
    return {"schema": 1, "task": task.name, "meta_features": features,
            "layers": [info.to_dict() for info in layers], "sensitivity": sensitivity,
            "teacher": {k: float(v) for k, v in teacher.items() if isinstance(v, (int, float))}}


def _pages(client: Any, experiment_ids: list[str], filter_string: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _experiments(client: Any, names: Iterable[str] | None, skipped: Counter[str]) -> list[str]:
    if names is None:
        return [e.experiment_id for e in client.search_experiments()]
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            skipped[f"no experiment {name!r}"] += 1
        else:
            ids.append(exp.experiment_id)
    return ids


def _read_meta(client: Any, run_id: str) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, META_ARTIFACT, tmp)
            with open(path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except Exception:  # noqa: BLE001 - any missing or broken artifact only skips this search
            return None
    return meta if isinstance(meta, dict) else None


def _meta_problem(meta: Mapping[str, Any] | None) -> str | None:
    if meta is None:
        return "parent run without a readable meta.json"
    if str(meta.get("schema", 1)) != "1":
        return f"meta.json schema {meta.get('schema')}"
    features = meta.get("meta_features")
    if not isinstance(features, Mapping) or set(features) != set(FEATURE_NAMES):
        return "meta.json of another meta-feature version"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in features.values()):
        return "meta.json with meta-features that are not numbers"
    sensitivity = meta.get("sensitivity")
    if not isinstance(sensitivity, Mapping) or not sensitivity:
        return "meta.json without sensitivity probes"
    teacher = meta.get("teacher")
    if not isinstance(teacher, Mapping) or not teacher.get("accuracy"):
        return "meta.json without teacher accuracy"
    return None


def _child_row(run: Any, meta: Mapping[str, Any], layers: list[LayerInfo], study: str) -> dict[str, Any]:
    from .history import make_row  # noqa: PLC0415 (history imports this module lazily)

    metrics = dict(run.data.metrics)
    policy = policy_from_params(run.data.params, [info.name for info in layers])
    teacher = meta["teacher"]
    ratio = metrics.get("compression_ratio")
    if ratio is None and teacher.get("size_bytes") and metrics.get("size_bytes"):
        ratio = float(teacher["size_bytes"]) / float(metrics["size_bytes"])
    metrics["compression_ratio"] = ratio
    encoding = encode_policy(policy, layers, meta["sensitivity"], compression_ratio=ratio)
    return make_row(str(meta["task"]), study, meta["meta_features"], encoding, metrics,
                    float(teacher["accuracy"]), policy)


#: Why a child run is no history row, by its status (KILLED: stopped early by ASHA, or a search interrupted).
_UNUSED = {"FAILED": "failed trial", "KILLED": "trial stopped early (ASHA) or interrupted",
           "RUNNING": "unfinished trial", "SCHEDULED": "unfinished trial"}


def _search_rows(client: Any, exp_id: str, parent: Any, skipped: Counter[str]) -> list[dict[str, Any]]:
    children = list(_pages(client, [exp_id], f"tags.`{_PARENT}` = '{parent.info.run_id}'"))
    meta = _read_meta(client, parent.info.run_id)
    problem = _meta_problem(meta)
    if problem is not None:  # counted per trial, as every other skip: the search's trials are the rows lost
        skipped[f"{problem} (the trials of its search)"] += max(len(children), 1)
        return []
    try:
        layers = [LayerInfo.from_dict(d) for d in meta["layers"]]
    except (ConfigError, TypeError, KeyError):
        skipped["meta.json with invalid layers"] += max(len(children), 1)
        return []
    study = parent.data.tags.get("metacompress.study_name", parent.info.run_id)
    rows = []
    for run in children:
        if run.data.tags.get(_ROLE, "trial") != "trial" or run.info.status != "FINISHED":
            skipped[_UNUSED.get(run.info.status, "unfinished or failed trial")] += 1
            continue
        try:
            rows.append(_child_row(run, meta, layers, study))
        except (ConfigError, ValueError, KeyError, TypeError) as exc:
            skipped[f"trial params or metrics unusable ({type(exc).__name__})"] += 1
    return rows


def read_mlflow(tracking_uri: str | None, experiment_names: Iterable[str] | None = None
                ) -> tuple[list[dict[str, Any]], Counter[str]]:
    """History rows of every finished search in ``tracking_uri`` (all experiments unless names are given).

    Returns:
        ``(rows, skipped)``: :func:`~.history.make_row` dicts and the count of skipped rows by reason.

    Raises:
        ConfigError: The store cannot be read at all (naming ``tracking_uri``); a search or trial that cannot be
            read is skipped and counted instead.
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415
    from mlflow.tracking import MlflowClient  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415 (MLflow's database stores)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per meta.json otherwise
    skipped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        for exp_id in _experiments(client, experiment_names, skipped):
            for parent in _pages(client, [exp_id], f"tags.`{_ROLE}` = 'parent'"):
                rows.extend(_search_rows(client, exp_id, parent, skipped))
    except (MlflowException, SQLAlchemyError, ImportError) as exc:  # down, refusing, no driver, another kind
        cause = " ".join(str(exc).split())
        cause = cause if len(cause) <= _CAUSE_CHARS else cause[: _CAUSE_CHARS - 3] + "..."
        raise invalid_value("tracking_uri", f"a readable MLflow tracking store (reading it failed: {cause})",
                            tracking_uri) from None
    return rows, skipped
