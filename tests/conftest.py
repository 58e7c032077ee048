"""Shared fixtures: compose the real configs, shrunk to a tiny random-init model. Plain helpers
live in helpers.py (pytest advises against importing conftest)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One torch (OpenMP) thread in every test process and every process a test starts, before numpy
# or torch is imported: two xdist workers with two threads each, beside their CLI children, stall
# in OpenMP's spin barriers whenever the other core is busy (the trainer tests: 15 s with one
# thread, 99 s with two, beside one busy process). The tiny model gains nothing from a second.
os.environ["OMP_NUM_THREADS"] = "1"

from helpers import ROOT, TINY, compose_cfg  # noqa: E402  (after the thread count is set)


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> a tiny config writing under tmp_path."""
    return lambda *overrides: compose_cfg([*TINY, *overrides], tmp_path)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread (see OMP_NUM_THREADS above) before and after every test: a test that runs
    code setting torch's thread count (trainer.num_threads, a SLURM allocation) leaves no more to
    the next test, nor to the module fixtures of the next file."""
    import torch

    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory) -> Path:
    """ftsweep's cache folder (the empty-store template, tracking/new_store.py) in this session's
    temporary folder, not the user's home; every command a test starts inherits it."""
    folder = tmp_path_factory.mktemp("ftsweep-cache")
    os.environ["FTSWEEP_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture
def migrated_store(tmp_path) -> str:
    """The URI of tmp_path/mlflow.db (make_cfg's store), an empty MLflow store made as ftsweep
    makes one (a copy of the template: MLflow's migrations take 4-8 s for every new SQLite file)."""
    from ftsweep.tracking.new_store import create_from_template

    create_from_template(tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(autouse=True)
def _sys_path_kept():
    """mlflow.pyfunc.load_model puts a model's code/ folder (a copy of ftsweep) first on sys.path for
    good; a later test's child process would import that copy. Each test gets the path it started with."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests first. `make test` hands whole files to two workers in
    collection order; alphabetical order left test_sweeps.py (minutes) to start last and end
    the run on one worker while the other sat idle. Within a file the order is kept."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


def _left_in_checkout() -> set[str]:
    """What git sees beside the tracked files (ignored ones too: a stray mlflow.db is ignored)."""
    done = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True)
    return {line for line in done.stdout.splitlines() if ".pytest_cache" not in line and "__pycache__" not in line}


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller only, under xdist
        session.config._checkout_before = _left_in_checkout()


@pytest.hookimpl(trylast=True)  # after xdist's own, which sets the exit status
def pytest_sessionfinish(session, exitstatus):
    """The suite writes under tmp paths only: a file it leaves in the checkout (a store MLflow made in
    the working directory, say) fails the run, naming the file."""
    before = getattr(session.config, "_checkout_before", None)
    if before is None:
        return
    left = sorted(_left_in_checkout() - before)
    if left:
        session.config.get_terminal_writer().line(f"the suite left files in the checkout: {left}", red=True)
        session.exitstatus = 1
