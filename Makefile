# metacompress — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: install demo test test-slow test-gpu test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull the newest CUDA build (several GB).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/metacompress search experiments/configs/digits-cnn.yaml --trials 12 --out out/demo

test: install
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: install
	$(VENV)/bin/pytest -m "slow" -q

# The CUDA tests (skipped without a GPU); experiments/gpu_check.sh runs them with the GPU benchmark.
test-gpu: install
	$(VENV)/bin/pytest -m gpu -q

test-all: install
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) out mlflow.db metacompress.db ray_results .pytest_cache
