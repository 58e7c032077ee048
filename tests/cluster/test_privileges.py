"""Least privilege: each service of `make cluster-up` runs as a user of its own (slurmd alone as
root, as SLURM requires), with an environment of its own, and the files each reads or writes
belong to it with modes that keep others out; `up` again puts back owners and modes that changed
(a state folder from a cluster-up that ran everything as root)."""

from __future__ import annotations

import configparser
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from .helpers import STATE
from helpers import ROOT

pytestmark = pytest.mark.cluster

SERVER_USER = "ftsweep-mlflow"
USERS = {"mlflow": SERVER_USER, "postgres": "postgres", "mariadb": "mysql", "munged": "munge",
         "slurmdbd": "slurm", "slurmctld": "slurm", "slurmd": "root"}
# What a service's environment may hold (deploy/lib.sh: start), beyond what the shell adds (SHLVL, _)
BASE_ENV = {"PATH", "LANG", "LC_ALL", "TZ", "SLURM_CONF", "SHLVL", "_"}
SERVER_ENV = {"HOME", "PGPASSFILE", "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD",
              "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}


def _pid(service: str) -> int:
    return int((STATE / f"run/{service}.pid").read_text())


def _groups() -> dict[int, list[tuple[int, str]]]:
    """Process group -> its processes as (pid, user), from `ps` (the user column as an admin sees it)."""
    out = subprocess.run(["ps", "-e", "-o", "pgid=,pid=,user:32="], capture_output=True, text=True, check=True).stdout
    groups: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        pgid, pid, user = line.split()
        groups.setdefault(int(pgid), []).append((int(pid), user))
    return groups


def test_each_service_runs_as_its_own_user(cluster):
    groups = _groups()
    found = {}
    for service in USERS:
        pid = _pid(service)
        # every process of the group: the server's workers, postgres' backends; slurmd's leader only (it
        # starts each job as the job's user)
        members = [p for p in groups[pid] if p[0] == pid] if service == "slurmd" else groups[pid]
        found[service] = {user for _, user in members}
    assert found == {service: {user} for service, user in USERS.items()}


def _environ(pid: int) -> dict[str, str]:
    """A process's environment as it started; {} for one gone since `ps` (a postgres backend may end)."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


def test_no_service_gets_the_callers_environment(cluster):
    """Only the names start() keeps, and the server's own; no password but the server's admin one, which
    it needs. (postgres writes its status over its environment for `ps`: its names are not checked.)"""
    password = (STATE / "secrets/mlflow-admin").read_text().strip()
    for service in ("mlflow", "mariadb", "munged", "slurmdbd", "slurmctld", "slurmd"):
        extra = set(_environ(_pid(service))) - BASE_ENV - (SERVER_ENV if service == "mlflow" else set())
        # a daemon an older cluster-up started (under its user already, so not restarted) keeps the environment
        # it got then: make cluster-down && make cluster-up
        assert not extra, (service, sorted(extra))
    holders = {service for service in USERS for pid, _ in _groups()[_pid(service)]
               if any(password in value for value in _environ(pid).values())}
    assert holders == {"mlflow"}
    assert _environ(_pid("mlflow"))["MLFLOW_AUTH_ADMIN_PASSWORD"] == password


def _owner_mode(path: Path) -> tuple[str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


EXPECTED = {  # path under the state folder -> (owner, mode)
    "secrets": ("root", 0o700),
    **{f"secrets/{name}": ("root", 0o600) for name in
       ("mlflow-admin", "mlflow-flask-key", "mlflow-credentials", "postgres-mlflow", "pgpass", "slurmdbd")},
    "mlflow-server": (SERVER_USER, 0o700),      # the server's folder: its auth config and its pgpass
    "mlflow-server/pgpass": (SERVER_USER, 0o600),
    "mlflow-server/auth.ini": (SERVER_USER, 0o600),
    "mlflow-artifacts": (SERVER_USER, 0o750),
    "log/mlflow.log": (SERVER_USER, 0o640),
    "etc/slurm/slurm.conf": ("root", 0o644),
    "etc/slurm/slurmdbd.conf": ("slurm", 0o600),      # slurmdbd refuses it otherwise: it holds MariaDB's password
    "slurm/ctld": ("slurm", 0o700),              # StateSaveLocation: job scripts and environments
    "slurm/run": ("slurm", 0o755),
    "log/slurmctld.log": ("slurm", 0o640),
    "log/slurmdbd.log": ("slurm", 0o640),
    "run": ("root", 0o755),                      # the pid files cluster-down signals: root's alone
}


def test_the_files_belong_to_their_services(cluster):
    assert {path: _owner_mode(STATE / path) for path in EXPECTED} == EXPECTED
    pid_files = {service: _owner_mode(STATE / f"run/{service}.pid") for service in USERS}
    assert {service: (owner, mode & 0o022) for service, (owner, mode) in pid_files.items()} == \
        {service: ("root", 0) for service in USERS}
    for folder, owner in (("mlflow-artifacts", SERVER_USER), ("slurm/ctld", "slurm")):
        assert {_owner_mode(p)[0] for p in (STATE / folder).rglob("*")} <= {owner}, folder
    # the admin's login in MLflow's credentials-file format, for ~/.mlflow/credentials
    login = configparser.ConfigParser()
    login.read(STATE / "secrets/mlflow-credentials")
    assert dict(login["mlflow"]) == {"mlflow_tracking_username": "admin",
                                     "mlflow_tracking_password": (STATE / "secrets/mlflow-admin").read_text().strip()}


def test_up_again_puts_back_owners_and_modes(cluster):
    """Root's files and open modes, as a cluster-up that ran the server as root left them, fixed by
    the next `up` while the services run (only files they read at start are changed: they keep working)."""
    artifact = STATE / "mlflow-artifacts/left-by-root"
    artifact.mkdir(exist_ok=True)
    for path in ("secrets", "mlflow-server"):
        (STATE / path).chmod(0o755)
    for path in ("secrets/pgpass", "secrets/mlflow-credentials", "mlflow-server/auth.ini", "etc/slurm/slurmdbd.conf"):
        (STATE / path).chmod(0o644)
    for path in ("mlflow-server/auth.ini", "etc/slurm/slurmdbd.conf", "log/mlflow.log", "log/slurmctld.log"):
        subprocess.run(["chown", "root:root", str(STATE / path)], check=True)
    try:
        for script in ("deploy/slurm/slurm.sh", "deploy/mlflow/server.sh"):
            done = subprocess.run([str(ROOT / script), "up"], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            assert "already running" in done.stdout and "restarting" not in done.stdout, done.stdout
        assert {path: _owner_mode(STATE / path) for path in EXPECTED} == EXPECTED
        assert _owner_mode(artifact)[0] == SERVER_USER
    finally:
        artifact.rmdir()
