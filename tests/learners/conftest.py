"""Shared fixtures of the learners tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def task_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher/data cache folder per test session, so teachers train at most once per session."""
    return tmp_path_factory.mktemp("metacompress-cache")
