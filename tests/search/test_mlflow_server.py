"""Integration: a search tracked by a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from metacompress.search.config import load_config
from metacompress.search.runner import run_search


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer within 90 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_search_logs_runs_and_registers_pareto_models_on_a_tracking_server(search_yaml, mlflow_server):
    cfg = load_config(search_yaml(n_trials=3, tracking_uri=mlflow_server))
    summary = run_search(cfg)
    client = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 4 and len(children) == 3
    versions = client.search_model_versions(f"name = '{cfg.experiment_name}-pareto'")
    assert len(versions) == len(summary["pareto"]) >= 1
    parent = next(r for r in runs if r.data.tags.get("metacompress.role") == "parent")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "pareto.png"} <= names
