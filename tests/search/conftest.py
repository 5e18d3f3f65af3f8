"""Fixtures for end-to-end searches: a fast real task and per-test storages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """A warning said once per process (``config.warn_once``) is said again in each test, which may look for it."""
    from metacompress.search import config

    config._SAID.clear()
    yield


@pytest.fixture
def search_yaml(tmp_path: Path):
    """Write a small digits-mlp search config into ``tmp_path`` and return its path (kwargs override keys)."""

    def make(**overrides) -> Path:
        cfg = {
            "task": "digits-mlp",
            "n_trials": 3,
            "seed": 0,
            "sampler": "tpe",
            "storage": f"sqlite:///{tmp_path}/study.db",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "out": str(tmp_path / "out"),
            "warm_start": {"mode": "off"},
            "space": {"bits": [2, 4, 8], "epochs": {"low": 1, "high": 1},
                      "prune_method": ["unstructured", "structured"]},
            "train": {"latency_repeats": 2, "batch_size": 128},
        }
        cfg.update(overrides)
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make
