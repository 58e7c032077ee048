"""The deploy scripts' shell helpers (deploy/lib.sh), without the cluster: secrets and the files a
service reads get their owner and mode on every run, whatever an older run left, and a service starts
as its user with an environment of its own. Seconds; the owner checks need root (as cluster-up does)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT

DEPLOY = ROOT / "deploy"
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (cluster-up runs as root)")


def lib(state: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    """`script` run by bash after sourcing deploy/lib.sh, its state folder `state`."""
    full_env = dict(os.environ, FTSWEEP_CLUSTER_STATE=str(state), **env)
    return subprocess.run(["bash", "-c", f'source "{DEPLOY}/lib.sh"\n{script}'], env=full_env,
                          capture_output=True, text=True, timeout=60)


def owner_mode(path: Path) -> tuple[str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


def running(pid: int) -> bool:
    """Alive, not a zombie (an orphan waits for whoever reaps it here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_scripts_parse():
    assert len(SCRIPTS) >= 5
    for script in SCRIPTS:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{script}: {done.stderr}"


def test_a_secret_gets_its_modes_again(tmp_path):
    (tmp_path / "secrets").mkdir(mode=0o755)
    (tmp_path / "secrets/pw").write_text("kept-password\n")
    (tmp_path / "secrets/pw").chmod(0o644)
    done = lib(tmp_path, "secret pw; secret new >/dev/null")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "kept-password\n"
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert [stat.S_IMODE((tmp_path / f"secrets/{n}").stat().st_mode) for n in ("pw", "new")] == [0o600, 0o600]
    assert len((tmp_path / "secrets/new").read_text().strip()) >= 20


@as_root
def test_private_replaces_a_file_with_its_owner_and_mode(tmp_path):
    target = tmp_path / "pgpass"
    target.write_text("old\n")
    target.chmod(0o644)
    done = lib(tmp_path, f'printf "new\\n" | private "{target}" nobody')
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "new\n" and owner_mode(target) == ("nobody", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "pgpass", "run"]  # no temporary file left


@as_root
def test_owned_keeps_a_log_and_gives_it_to_its_daemon(tmp_path):
    log = tmp_path / "daemon.log"
    log.write_text("earlier lines\n")
    done = lib(tmp_path, f'owned nobody 640 "{log}" "{tmp_path}/new.log"')
    assert done.returncode == 0, done.stderr
    assert log.read_text() == "earlier lines\n"
    assert [owner_mode(p) for p in (log, tmp_path / "new.log")] == [("nobody", 0o640)] * 2


@as_root
def test_a_service_starts_as_its_user_with_only_its_environment(tmp_path):
    """start(): the user, its own session, / as its folder, and of the caller's environment only the
    names kept by default and those in SERVICE_ENV."""
    script = ('SERVICE_ENV="WANTED" WANTED=yes UNWANTED=no start probe nobody '
              'sh -c \'echo "user=$(id -un) sid=$(ps -o sid= -p $$ | tr -d " ") pid=$$ cwd=$(pwd)"; env\'')
    done = lib(tmp_path, script, CALLERS_SECRET="not for daemons")
    assert done.returncode == 0, done.stderr
    pid = int((tmp_path / "run/probe.pid").read_text())
    deadline = time.time() + 60  # waits for the probe to end (an event); bounded for a loaded box
    while running(pid) and time.time() < deadline:
        time.sleep(0.05)
    lines = (tmp_path / "log/probe.log").read_text().splitlines()
    assert lines[0] == f"user=nobody sid={pid} pid={pid} cwd=/"
    names = {line.split("=", 1)[0] for line in lines[1:]}
    assert "WANTED=yes" in lines and {"UNWANTED", "CALLERS_SECRET", "HOME"}.isdisjoint(names)
    assert names <= {"WANTED", "PATH", "LANG", "LC_ALL", "TZ", "SLURM_CONF", "SHLVL", "_", "PWD"}


@as_root
def test_a_service_running_as_another_user_is_stopped_to_start_again(tmp_path):
    """What an older cluster-up started as root: stop_unless_user stops it (its files change owner
    next); one already under its user is left alone."""
    done = lib(tmp_path, "start probe root sleep 600 >/dev/null\n"
                         "stop_unless_user probe root; runs_as probe root && echo 'root: kept'\n"
                         "runs_as probe nobody || echo 'nobody: not yet'\n"
                         "stop_unless_user probe nobody; running probe || echo 'stopped'")
    assert done.returncode == 0, done.stderr
    lines = [line.split("  ", 1)[-1] for line in done.stdout.splitlines()]  # without say's time
    assert lines == ["root: kept", "nobody: not yet",
                     "probe: runs as root, not nobody (an older cluster-up): restarting it", "probe: stopped", "stopped"]
