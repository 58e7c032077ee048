# ftsweep — set-up, the main job, tests and the MLflow UI.
# `make install` then `make test` is all a fresh clone needs.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pinned so pip takes a known build: a CPU wheel where one is on local disk,
# PyPI's CUDA wheel on a Linux GPU box. Override: make install TORCH='torch==2.5.1'
TORCH  ?= torch==2.13.0
OUTPUTS ?= outputs
UI_PORT ?= 5000
ARGS   ?=
EXPERIMENT ?= table1

.PHONY: help install run table test test-fast test-cluster cluster-up cluster-down lint ui clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install:  ## create .venv and install ftsweep (editable) with its dev tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@echo "installed: $$($(PY) -c 'import torch, transformers, mlflow; print("torch", torch.__version__, "| transformers", transformers.__version__, "| mlflow", mlflow.__version__)')"

run:  ## the main job: 5-fold CV of the bundled MiniLM on the demo data (ARGS='optimizer=llrd ...')
	$(PY) -m ftsweep $(ARGS)

table:  ## results table of a sweep: make table EXPERIMENT=table1
	$(PY) -m ftsweep.table --experiment "$(EXPERIMENT)"

test:  ## the whole test suite, slow end-to-end tests included
	$(PY) -m pytest -q

test-fast:  ## unit tests only (skips the end-to-end CLI runs)
	$(PY) -m pytest -q -m "not slow and not cluster"

cluster-up:  ## single-node SLURM + PostgreSQL-backed MLflow server on 127.0.0.1 (root; apt-installs what is missing)
	deploy/cluster-up.sh

cluster-down:  ## stop what cluster-up started (data kept in /var/lib/ftsweep-cluster)
	deploy/cluster-down.sh

test-cluster:  ## integration tests against the services of make cluster-up (tests/cluster)
	$(PY) -m pytest -q -m cluster --durations=0 tests/cluster

lint:  ## ruff
	$(PY) -m ruff check ftsweep tests

ui:  ## MLflow UI on the default store (outputs/mlflow.db), http://127.0.0.1:$(UI_PORT)
	@mkdir -p $(OUTPUTS)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(abspath $(OUTPUTS))/mlflow.db" --host 127.0.0.1 --port $(UI_PORT) --workers 1

clean:  ## remove outputs/ (runs, MLflow store, demo data cache) and caches
	rm -rf $(OUTPUTS) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
