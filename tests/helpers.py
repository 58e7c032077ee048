"""What the tests share that is not a fixture: the repo's paths, the tiny config, the real command
line in a subprocess, servers and ports. Tests import these (`from helpers import ...`); pytest's
fixtures stay in conftest.py, which pytest advises never to import."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import in_process
import numpy as np
import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import ftsweep  # noqa: F401  (registers resolvers)
from ftsweep.search.paired import encode_errors
from ftsweep.tags import ROW_ERRORS_ATTR

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY = ["model=tiny", "cv.n_folds=2", "trainer.epochs=1", "trainer.batch_size=8", "trainer.max_steps=6",
        "data.max_rows=64", "trainer.max_length=32"]


def compose_conf(overrides: list[str], output_root: Path) -> DictConfig:
    """conf/ as composed for a run whose outputs go under `output_root`, nothing else changed."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_root={output_root}"])


def compose_cfg(overrides: list[str], output_root: Path) -> DictConfig:
    cfg = compose_conf(overrides, output_root)
    with open_dict(cfg):
        cfg.tracking.uri = f"sqlite:///{output_root}/mlflow.db"
    return cfg


def cli_env(extra: dict | None = None) -> dict:
    """This environment without what would redirect a child ftsweep (store, outputs, debug).
    One torch thread per child: the tiny model gains nothing from a second one, and children that
    run at once (or beside other work on a 2-core CI box) with two threads each stall in OpenMP's
    barriers, many times slower."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(extra or {}))
    for name in ("FTSWEEP_DEBUG", "MLFLOW_TRACKING_URI", "FTSWEEP_OUTPUTS"):
        full_env.pop(name, None)
    return full_env


def run_cli(module: str, *args: str, cwd: Path, timeout: int = 240, env: dict | None = None,
            own_process: bool = False) -> subprocess.CompletedProcess:
    """The real command line, as a user types it (`python -m ftsweep ...`): its exit code, stdout
    and stderr. Run in this process where that is the same thing (see in_process.py: it saves the
    5-10 s every new process spends importing torch, transformers and MLflow); in a process of its
    own for parallel launchers, for calls from other threads, for an `env` with PYTHON* variables
    (read at start-up), with `own_process=True`, or for every call when FTSWEEP_TEST_SUBPROCESS=1."""
    if _in_this_process(module, args, env, own_process):
        return in_process.run(module, list(args), cwd, cli_env(env), timeout)
    return _in_own_process(module, args, cwd, timeout, cli_env(env))


def _in_own_process(module: str, args, cwd: Path, timeout: int, full_env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def _in_this_process(module: str, args, env: dict | None, own_process: bool | None) -> bool:
    read_at_start_up = any(name.startswith("PYTHON") for name in env or {})  # PYTHONPATH and the like
    return not own_process and not read_at_start_up and in_process.fits(module, args)


@contextlib.contextmanager
def at_once(most: int = 8):
    """start(fn, *args, **kwargs) -> a future. A `run_cli` call that can run in this process runs
    there, at once: it skips the ~8 s of imports a new process pays, which on 2 busy cores is more
    than running side by side gains. Anything else (own processes, scripts) runs in a thread pool,
    `most` at a time, so start those first. Leaving the block waits for every one."""
    with ThreadPoolExecutor(max_workers=most) as pool:
        def start(fn, *args, **kwargs) -> Future:
            if fn is not run_cli:
                return pool.submit(fn, *args, **kwargs)
            if _in_this_process(args[0], args[1:], kwargs.get("env"), kwargs.get("own_process")):
                done: Future = Future()
                done.set_result(run_cli(*args, **kwargs))
                return done
            # the environment is read here: an in-process call changes os.environ while it runs
            return pool.submit(_in_own_process, args[0], args[1:], kwargs["cwd"], kwargs.get("timeout", 240),
                               cli_env(kwargs.get("env")))

        yield start


REQUIRE_CLUSTER = "FTSWEEP_REQUIRE_CLUSTER"


def cluster_unusable(reason: str) -> NoReturn:
    """The cluster tests cannot run: a developer without the cluster gets a skip with `reason`;
    CI, which sets FTSWEEP_REQUIRE_CLUSTER=1 (.ci/run), gets a failure, so a dead slurmd or
    server can never turn every cluster test into a green skip."""
    if os.environ.get(REQUIRE_CLUSTER) == "1":
        pytest.fail(f"{reason} ({REQUIRE_CLUSTER}=1: the cluster tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A local MLflow server (127.0.0.1 only) on a SQLite file in `folder`; yields its URL and stops its
    whole process group, also when the test fails."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # starts in ~8 s instead of ~30
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "art")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_server(url, 180):  # ~8 s alone; the bound is for a loaded 2-core box
            pytest.fail("mlflow server did not start in 180 s")
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a process started with start_new_session (its whole group), then KILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=120)  # SIGTERM ends it in seconds; the bound is for a loaded box
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_server(url: str, seconds: float = 60) -> bool:
    """True once `url`/health answers (an MLflow server or UI that has started)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return True
        except OSError:
            time.sleep(0.5)
    return False


# The paired pruner's trials, fabricated from per-row squared errors (no training)

def predictions(errors: np.ndarray, ids: list[str] | None = None) -> pd.DataFrame:
    """A fold's predictions.csv whose squared errors are `errors` (targets 0, so pred = sqrt(e))."""
    ids = ids or [f"r{i:03d}" for i in range(len(errors))]
    return pd.DataFrame({"id": ids, "fold": 0, "target": 0.0, "pred_best": np.sqrt(errors), "pred_last": 0.0})


def study_with_best(pruner, best: list[np.ndarray]) -> optuna.Study:
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    for step, errors in enumerate(best):
        trial.set_user_attr(ROW_ERRORS_ATTR.format(step=step), encode_errors(predictions(errors)))
        trial.report(float(np.sqrt(errors.mean())), step)
    study.tell(trial, float(np.mean([np.sqrt(e.mean()) for e in best])))
    return study


def pruned_after(study: optuna.Study, folds: list[pd.DataFrame]) -> int | None:
    """The fold position the pruner stops a new trial at, or None when it runs every fold."""
    trial = study.ask()
    for step, frame in enumerate(folds):
        trial.set_user_attr(ROW_ERRORS_ATTR.format(step=step), encode_errors(frame))
        trial.report(0.0, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, 0.0)
    return None
