"""What the cluster tests share (the services of `make cluster-up`, runs, SLURM jobs): plain
functions, imported as `from .helpers import ...`; the `cluster` fixture is in conftest.py."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from helpers import ROOT, cluster_unusable, run_cli

STATE = Path(os.environ.get("FTSWEEP_CLUSTER_STATE", "/var/lib/ftsweep-cluster"))


def _read_env(path: Path) -> dict[str, str]:
    """cluster.env is `export KEY=value` lines, written by deploy/cluster-up.sh."""
    pairs = (shlex.split(line)[1].split("=", 1) for line in path.read_text().splitlines() if line.startswith("export "))
    return dict(pairs)


@dataclass
class Cluster:
    uri: str        # the MLflow server
    database: str   # its PostgreSQL backend (password in $PGPASSFILE)
    partition: str
    env: dict[str, str]  # what clients need: SLURM_CONF, PGPASSFILE, HOME (its .mlflow/credentials: the login)
    study_storage: str = ""  # PostgreSQL database for search studies (hydra.sweeper.storage)

    def launcher(self) -> list[str]:
        """Overrides that send every sweep job through sbatch into the shared server. One torch thread
        per job: SLURM gives each job one CPU here, and torch would otherwise start one per core."""
        return ["hydra/launcher=submitit_slurm", f"hydra.launcher.partition={self.partition}",
                "hydra.launcher.timeout_min=30", "trainer.num_threads=1", f"tracking.uri={self.uri}"]

    # Bounds, not waits: each ends when its event comes. They are sized for real daemons on a 2-core VM
    # beside other work (a 15-minute limit cut a run short there), so a slow box fails no test.
    def run(self, module: str, *args: str, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
        return run_cli(module, *args, cwd=cwd, timeout=timeout, env=self.env)

    def popen(self, module: str, *args: str, cwd: Path) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env.pop("MLFLOW_TRACKING_URI", None)
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def slurm(self, *command: str) -> str:
        env = dict(os.environ, **self.env)
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60).stdout

    def job_states(self, sweep_dir: Path) -> dict[str, str]:
        """SLURM's final word (sacct) on every job submitit sent for this sweep, e.g. {'12_0': 'COMPLETED'}.
        Waits for the queue to drain: submitit returns once a job wrote its result, while SLURM
        may still be finishing the job (RUNNING / COMPLETING) for a moment."""
        self.wait_for_no_jobs()
        arrays = {job.split("_")[0] for job in slurm_jobs(sweep_dir)}
        out = self.slurm("sacct", "-n", "-P", "-o", "JobID,State", *(f"-j{i}" for i in arrays))
        return {job: state.split()[0] for job, state in (line.split("|") for line in out.splitlines()) if "." not in job}

    def wait_for_no_jobs(self, timeout: float = 900) -> None:
        deadline = time.time() + timeout
        while self.slurm("squeue", "-h", "-o", "%i").strip():
            if time.time() > deadline:
                pytest.fail(f"SLURM jobs still queued after {timeout} s:\n{self.slurm('squeue')}")
            time.sleep(1)

    def server(self, action: str) -> None:
        """deploy/mlflow/server.sh up|down|restart, the same script cluster-up runs."""
        subprocess.run([str(ROOT / "deploy/mlflow/server.sh"), action], check=True, capture_output=True, timeout=240)


LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def client_home(credentials: Path, home: Path) -> Path:
    """A HOME of the tests' own with the cluster's login as MLflow's credentials file, as a user sets
    one up (docs/cluster-and-team-server.md): HOME/.mlflow 0700, the file 0600. Root's real ~/.mlflow is
    left alone (others' tests share this machine)."""
    (home / ".mlflow").mkdir(mode=0o700, parents=True, exist_ok=True)
    target = home / ".mlflow/credentials"
    target.touch(mode=0o600)
    target.chmod(0o600)
    target.write_bytes(credentials.read_bytes())
    return home


def connect(home: Path) -> Cluster:
    """The services as cluster.env describes them, checked usable (else skip, or fail under CI). The login
    reaches every client (this process, its children, their SLURM jobs) through HOME/.mlflow/credentials,
    not the environment: no password variable is set, and one the caller had is removed."""
    env_file = STATE / "cluster.env"
    if not env_file.exists():
        cluster_unusable(f"the cluster is not up ({env_file} missing): run `make cluster-up` as root first")
    values = _read_env(env_file)
    if "FTSWEEP_CLUSTER_MLFLOW_CREDENTIALS" not in values:
        cluster_unusable(f"{env_file} names no MLflow credentials file (an older cluster-up): rerun `make cluster-up`")
    client_home(Path(values["FTSWEEP_CLUSTER_MLFLOW_CREDENTIALS"]), home)
    for name in LOGIN_VARIABLES:
        os.environ.pop(name, None)
    os.environ["HOME"] = str(home)  # this process's MlflowClient calls
    found = Cluster(values["FTSWEEP_CLUSTER_TRACKING_URI"], values["FTSWEEP_CLUSTER_DATABASE"],
                    values["FTSWEEP_CLUSTER_PARTITION"],
                    {**{k: values[k] for k in ("SLURM_CONF", "PGPASSFILE")}, "HOME": str(home)},
                    values.get("FTSWEEP_CLUSTER_STUDY_STORAGE", ""))
    try:
        urllib.request.urlopen(f"{found.uri}/health", timeout=5)
        nodes = found.slurm("sinfo", "-h", "-N", "-o", "%T").split()
    except (OSError, subprocess.SubprocessError) as exc:
        cluster_unusable(f"the cluster is not up ({exc}): run `make cluster-up` as root first")
    if not any(state in ("idle", "mixed", "allocated") for state in nodes):
        cluster_unusable(f"the SLURM node is not usable (state {nodes}): run `make cluster-up` as root")
    return found


def unique(prefix: str) -> str:
    """An experiment name of its own: the server outlives test runs, and a reused name would resume."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def experiment_runs(uri: str, experiment: str) -> tuple[list[Run], list[Run]]:
    """(parent runs, fold runs) of a sweep, the results-table run left out."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    runs = [r for r in runs if r.data.tags.get("ftsweep.kind") != "table"]
    return [r for r in runs if "ftsweep.fold" not in r.data.tags], [r for r in runs if "ftsweep.fold" in r.data.tags]


def finished_units(folds: list[Run]) -> list[tuple[str, str]]:
    return [(r.data.tags["ftsweep.config_key"], r.data.tags["ftsweep.fold"]) for r in folds if r.info.status == "FINISHED"]


def slurm_jobs(sweep_dir: Path) -> list[str]:
    """The jobs submitit sent for a sweep, from its folders: '<array>_<task>', task i = Hydra's job i."""
    return sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))


def sweep_dir(output_root: Path) -> Path:
    (found,) = (output_root / "multirun").glob("*/*")
    return found


def table_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("| ")]


def wait_midway(uri: str, experiment: str, proc: subprocess.Popen, timeout: float = 900) -> str:
    """Polls the server until one config has a FINISHED fold and an open one; returns its label."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if MlflowClient(uri).get_experiment_by_name(experiment) is not None:
            _, folds = experiment_runs(uri, experiment)
            for label in {r.data.tags["ftsweep.label"] for r in folds}:
                statuses = {r.info.status for r in folds if r.data.tags["ftsweep.label"] == label}
                if {"FINISHED", "RUNNING"} <= statuses:
                    return label
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no config got midway in time; the sweep printed:\n{proc.communicate()[0][-3000:]}")
