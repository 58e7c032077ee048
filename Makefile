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
DASHBOARD_PORT ?= 8080
# a search's Optuna storage (hydra.sweeper.storage; by default optuna.db beside the MLflow store)
STORAGE ?= sqlite:///$(abspath $(OUTPUTS))/optuna.db
ARGS   ?=
EXPERIMENT ?= table1
# make offline-wheels: the target box's Python and platform (wheels with C code are built per version)
PYTHON_VERSION ?= 3.12
PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
WHEELS ?= .whl
GPU_CHECK_ARGS ?=

.PHONY: help install run table test test-fast test-cluster cluster-up cluster-down lint ui dashboard browser clean offline-wheels gpu-check

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

# Two workers, one test file each at a time (module fixtures stay whole): most tests wait on CLI
# children with one torch thread, so one worker alone leaves a core idle. The 15 slowest are printed.
test:  ## the whole test suite, slow end-to-end tests included (about 11 minutes on 2 CPU cores)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast:  ## unit tests only (skips the end-to-end CLI runs)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not cluster"

cluster-up:  ## single-node SLURM + PostgreSQL-backed MLflow server on 127.0.0.1 (root; apt-installs what is missing)
	deploy/cluster-up.sh

cluster-down:  ## stop what cluster-up started (data kept in /var/lib/ftsweep-cluster)
	deploy/cluster-down.sh

test-cluster:  ## integration tests against the services of make cluster-up (tests/cluster)
	$(PY) -m pytest -q -m cluster --durations=0 tests/cluster

lint:  ## ruff, and the layers of docs/layout.md as import-linter contracts (pyproject.toml)
	$(PY) -m ruff check ftsweep hydra_plugins tests benchmarks
	$(VENV)/bin/lint-imports

ui:  ## MLflow UI on the default store (outputs/mlflow.db), http://127.0.0.1:$(UI_PORT)
	@mkdir -p $(OUTPUTS)
	$(PY) -m ftsweep.ui --tracking-uri "sqlite:///$(abspath $(OUTPUTS))/mlflow.db" --port $(UI_PORT)

dashboard:  ## Optuna Dashboard over the search studies (STORAGE=...), http://127.0.0.1:$(DASHBOARD_PORT)
	$(PY) -m ftsweep.dashboard "$(STORAGE)" --host 127.0.0.1 --port $(DASHBOARD_PORT)

browser:  ## Debian's chromium, for the test that opens the UI link headless (skipped without one; under CI=true, failed)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@chromium --version 2>/dev/null | head -1

offline-wheels:  ## wheels an offline GPU box lacks (Python $(PYTHON_VERSION), manylinux x86_64) into $(WHEELS)/
	@mkdir -p $(WHEELS)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(PYTHON_VERSION) --implementation cp \
		$(addprefix --platform ,$(PLATFORMS)) -d $(WHEELS) -r benchmarks/offline-wheels.txt
	$(PY) -m pip wheel -q --no-deps -w $(WHEELS) antlr4-python3-runtime==4.9.3  # sdist only: pure Python, built here
	@echo "$$(ls $(WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(WHEELS) | cut -f1); on the box:"
	@echo "  pip install --no-index --no-deps --target .whl/site .whl/*.whl && make gpu-check"

gpu-check:  ## the GPU check, part 1 (<= 8 min on one H100; GPU_CHECK_ARGS='--part 2'): JSON in benchmarks/results/
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:  ## remove outputs/ (runs, MLflow store, demo data cache) and caches
	rm -rf $(OUTPUTS) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
