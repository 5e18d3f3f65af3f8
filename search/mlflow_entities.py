"""What the tracker hands to MLflow, built outside it: run params and metrics as MLflow entities, a logged
PyTorch model, and a sqlite tracking store created atomically. :mod:`.tracking` decides when each is written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["create_sqlite_store", "log_torch_model", "metrics_of", "param_value", "params_of"]

_LOG = logging.getLogger(__name__)
#: Longest param value logged (MLflow's limit is 6000 characters).
MAX_PARAM_CHARS = 6000


def param_value(value: Any) -> str:
    return str(value)[:MAX_PARAM_CHARS]


def params_of(flat: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(str(k)[:250], param_value(v)) for k, v in flat.items()]


def metrics_of(metrics: Mapping[str, Any], epoch_metrics: list[dict[str, Any]] | None) -> list[Any]:
    """Final metrics at step 0, then ``epoch/<name>`` at step = the dict's ``epoch`` or its index."""
    from mlflow.entities import Metric

    now, num = int(time.time() * 1000), (int, float)
    out = [Metric(str(k), float(v), now, 0) for k, v in metrics.items() if isinstance(v, num)]
    for index, epoch in enumerate(epoch_metrics or []):
        step = int(epoch.get("epoch", index))
        out += [Metric(f"epoch/{k}", float(v), now, step)
                for k, v in epoch.items() if k != "epoch" and isinstance(v, num)]
    return out


def log_torch_model(model: Any, registered_model_name: str, input_example: Any) -> Any:
    """``mlflow.pytorch.log_model`` (MLflow 3: ``name=``) into the active run: pt2 when possible, else pickle."""
    import mlflow.pytorch
    import torch

    kwargs = {"name": "model", "registered_model_name": registered_model_name,
              "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}
    if input_example is not None:
        from mlflow.models import infer_signature

        try:  # anything failing here is the model's, not the store's: a store outage would stop the search's logging
            with torch.no_grad():
                output = model(input_example)
            signature = infer_signature(input_example.cpu().numpy(), output.detach().cpu().numpy())
            return mlflow.pytorch.log_model(model, input_example=input_example.cpu().numpy(), signature=signature,
                                            serialization_format="pt2", **kwargs)
        except Exception as exc:  # noqa: BLE001 - torch.export cannot trace every model
            _LOG.info("pt2 export failed (%s); saving the model with pickle.", exc)
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return mlflow.pytorch.log_model(model, serialization_format="pickle", **kwargs)
    finally:
        quiet.setLevel(level)


def create_sqlite_store(uri: str) -> None:
    """Create a missing sqlite tracking database atomically.

    MLflow creates and migrates its tables on first use; a process killed during that (``kill -9`` of a job run)
    leaves a half-made database on which every later run fails ("table ... already exists"). Here the tables are
    made in a temporary file that is then hard-linked into place (a concurrent creator wins, its file is kept).
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    if db.exists() or not db.parent.is_dir():
        return
    from mlflow import MlflowClient

    tmp = db.with_name(f".{db.name}.init-{os.getpid()}")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # creates every table
        os.link(tmp, db)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
