"""The cluster's secrets: the MLflow server answers only a login, a client without the right one
gets one line, and no password is ever on a command line (`ps` shows every process's argv)."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .helpers import STATE
from helpers import ROOT, cli_env

pytestmark = pytest.mark.cluster

SECRETS = STATE / "secrets"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _status(url: str, login: tuple[str, str] | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(login).encode()).decode()} if login else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_answers_only_the_admin_login(cluster):
    password = (SECRETS / "mlflow-admin").read_text().strip()
    assert len(password) >= 20
    # statuses first, so that a failed assert never prints the password
    statuses = [_status(cluster.uri + SEARCH), _status(cluster.uri + SEARCH, ("admin", password + "x")),
                _status(cluster.uri + SEARCH, ("admin", password)), _status(cluster.uri + "/health")]
    assert statuses == [401, 401, 200, 200]  # /health: what cluster-up and the fixture poll
    # beside PostgreSQL's password, readable by root only
    assert stat.S_IMODE(SECRETS.stat().st_mode) == 0o700
    for name in ("mlflow-admin", "mlflow-flask-key", "postgres-mlflow", "pgpass"):
        assert stat.S_IMODE((SECRETS / name).stat().st_mode) == 0o600, name


def _without_login(**extra: str) -> dict[str, str]:
    env = cli_env(extra)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    return {**env, **extra}


@pytest.mark.parametrize(("module", "login", "expected"), [
    ("ftsweep.table", {}, "ftsweep.table: error: the MLflow server at {uri} needs a login (HTTP 401); set "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ("ftsweep", {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password"},
     "ftsweep: error: the MLflow server at {uri} refuses the login of user 'admin' (HTTP 401); set "
     "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
])
def test_a_missing_or_wrong_login_is_one_line(cluster, tmp_path, module, login, expected):
    args = {"ftsweep.table": ["--experiment", "anything", "--tracking-uri", cluster.uri],
            "ftsweep": ["model=tiny", "cv.n_folds=2", "data.max_rows=64", f"tracking.uri={cluster.uri}",
                        f"paths.output_root={tmp_path}"]}[module]
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=_without_login(**login),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected.format(uri=cluster.uri)), out.stderr[-3000:]


def test_no_password_on_a_command_line(cluster):
    """postgres.sh up again (it sets the role's password each time), with every PostgreSQL binary
    behind a wrapper that records its argv: the password is in none; nor in the server's argv."""
    real = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1])
    wrappers = Path(tempfile.mkdtemp(prefix="ftsweep-pgbin-"))  # not under pytest's root-only tmp: postgres runs these
    try:
        log = wrappers / "argv.log"
        log.touch()
        for binary in real.iterdir():
            wrapper = wrappers / binary.name
            wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >>{log}\nexec {binary} "$@"\n')
            wrapper.chmod(0o755)
        wrappers.chmod(0o755)
        log.chmod(0o666)
        subprocess.run([str(ROOT / "deploy/mlflow/postgres.sh"), "up"], env=dict(os.environ, FTSWEEP_PG_BIN=str(wrappers)),
                       check=True, capture_output=True, timeout=120)
        calls = log.read_text().splitlines()
    finally:
        for path in wrappers.iterdir():
            path.unlink()
        wrappers.rmdir()
    password = (SECRETS / "postgres-mlflow").read_text().strip()
    assert sum(call.startswith(f"{wrappers}/psql ") for call in calls) >= 4, calls  # the role, its password, 3 databases
    leaked = [call.replace(password, "<the password>") for call in calls if password in call]
    assert not leaked
    # the server: the passwords reach it through a pgpass file and its environment, not argv
    pid = (STATE / "run/mlflow.pid").read_text().strip()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "--app-name\0basic-auth" in argv
    in_argv = [name for name in ("postgres-mlflow", "mlflow-admin", "mlflow-flask-key")
               if (SECRETS / name).read_text().strip() in argv]
    assert in_argv == []
