"""The cluster's secrets: the MLflow server answers only a login, a client without the right one
gets one line, no password is ever on a command line (`ps` shows every process's argv), and the
MLflow password reaches SLURM jobs through the credentials file, never their environment (which
slurmctld keeps on disk)."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from .helpers import STATE, experiment_runs, finished_units, unique
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
    for name in ("mlflow-admin", "mlflow-flask-key", "mlflow-credentials", "postgres-mlflow", "pgpass"):
        assert stat.S_IMODE((SECRETS / name).stat().st_mode) == 0o600, name


def _without_login(home: Path, **extra: str) -> dict[str, str]:
    """No login variable, and a HOME without ~/.mlflow/credentials (the cluster fixture's HOME has one)."""
    env = cli_env(extra)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    home.mkdir(exist_ok=True)
    return {**env, **extra, "HOME": str(home)}


WRONG_FILE = "[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = not-the-password\n"
HINT = "put the login in ~/.mlflow/credentials (mode 0600) or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


@pytest.mark.parametrize(("module", "login", "expected"), [
    ("ftsweep.table", {}, "ftsweep.table: error: the MLflow server at {uri} needs a login (HTTP 401); " + HINT),
    ("ftsweep", {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password"},
     "ftsweep: error: the MLflow server at {uri} refuses the login of user 'admin' (HTTP 401; password from "
     "MLFLOW_TRACKING_PASSWORD); " + HINT),
    ("ftsweep.table", {"file": WRONG_FILE}, "ftsweep.table: error: the MLflow server at {uri} refuses the login of "
                                           "user 'admin' (HTTP 401; password from {home}/.mlflow/credentials); " + HINT),
])
def test_a_missing_or_wrong_login_is_one_line(cluster, tmp_path, module, login, expected):
    args = {"ftsweep.table": ["--experiment", "anything", "--tracking-uri", cluster.uri],
            "ftsweep": ["model=tiny", "cv.n_folds=2", "data.max_rows=64", f"tracking.uri={cluster.uri}",
                        f"paths.output_root={tmp_path}"]}[module]
    home, login = tmp_path / "home", dict(login)
    env = _without_login(home, **{k: v for k, v in login.items() if k != "file"})
    if "file" in login:
        (home / ".mlflow").mkdir(mode=0o700)
        (home / ".mlflow/credentials").write_text(login["file"])
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected.format(uri=cluster.uri, home=home)), out.stderr[-3000:]


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


def _held_jobs(cluster) -> list[str]:
    """Job ids SLURM holds at their user's request (only this test's sbatch --hold does that)."""
    out = cluster.slurm("squeue", "-h", "-r", "-t", "PD", "-o", "%i %r")
    return [line.split()[0] for line in out.splitlines() if line.split()[1:] == ["JobHeldUser"]]


def test_slurm_jobs_log_in_without_the_password_in_their_environment(cluster, tmp_path, monkeypatch):
    """A sweep through sbatch with its job held: slurmctld keeps the job's script and environment
    (the launching command's) in StateSaveLocation, and neither holds the password; a marker
    variable shows the files looked at are that job's. Released, the job logs in from
    HOME/.mlflow/credentials and runs its folds; no file SLURM wrote meanwhile holds the password."""
    password = (SECRETS / "mlflow-admin").read_text().strip().encode()
    experiment, marker = unique("no-password"), f"marker-{uuid.uuid4().hex}"
    monkeypatch.setenv("FTSWEEP_TEST_MARKER", marker)
    started = time.time() - 1  # file times come from a coarser clock than time.time()
    proc = cluster.popen("ftsweep", "-m", "model=tiny", "cv.n_folds=2", "data.max_rows=64",
                         f"tracking.experiment={experiment}", *cluster.launcher(),
                         "+hydra.launcher.additional_parameters.hold=true", f"paths.output_root={tmp_path}",
                         cwd=tmp_path)
    try:
        deadline = time.time() + 600  # waits for an event (sbatch returns); the bound is for a loaded 2-core box
        while not (held := _held_jobs(cluster)) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert len(held) == 1, (held, proc.poll() is not None and proc.communicate()[0][-3000:])
        job = held[0].split("_")[0]  # one config: one job, not an array
        files = {p.name: p.read_bytes() for p in (STATE / "slurm/ctld").glob(f"hash.*/job.{job}/*")}
        assert {"environment", "script"} <= set(files), sorted(files)
        assert marker.encode() in files["environment"]  # the launching command's environment, as sbatch sent it
        assert f"HOME={cluster.env['HOME']}".encode() in files["environment"]  # where the job finds its login
        assert b"MLFLOW_TRACKING_PASSWORD" not in files["environment"]
        assert [name for name, data in files.items() if password in data] == []
        assert password.decode() not in cluster.slurm("scontrol", "show", "job", "-dd", job)
        cluster.slurm("scontrol", "release", job)
        output = proc.communicate(timeout=1800)[0]  # a bound for a loaded box (see helpers.Cluster.run)
    finally:
        if proc.poll() is None:  # a failed assert above: no job left held, no sweep left waiting for it
            proc.kill()
            print(proc.communicate()[0][-3000:])
            for job in _held_jobs(cluster):
                cluster.slurm("scancel", job)
    assert proc.returncode == 0, output[-3000:]
    cluster.wait_for_no_jobs()
    states = [line.split("|") for line in cluster.slurm("sacct", "-n", "-P", "-o", "JobID,State", f"-j{job}").splitlines()]
    assert [state for step, state in states if "." not in step] == ["COMPLETED"], states
    parents, folds = experiment_runs(cluster.uri, experiment)
    assert len(parents) == 1 and len(set(finished_units(folds))) == 2
    # SLURM's files written since (the job's, slurmd's spool, the daemons' logs): no password either
    written = [p for p in [*(STATE / "slurm").rglob("*"), *(STATE / "log").glob("slurm*.log")]
               if p.is_file() and p.stat().st_mtime >= started]
    assert written and [str(p) for p in written if password in p.read_bytes()] == []
