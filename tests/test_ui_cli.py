"""`python -m ftsweep.ui` as a user meets it: a missing store, a busy port and Ctrl-C are each one
line with the right exit code (the server's bind error at exit 0, an empty store made, and 46 lines
of uvicorn's before)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ftsweep.tracking.store import Tracker

from helpers import ROOT, cli_env, free_port, run_cli

pytestmark = pytest.mark.slow


def test_a_missing_store_is_refused_not_made(tmp_path):
    out = run_cli("ftsweep.ui", "--tracking-uri", f"sqlite:///{tmp_path}/none/mlflow.db", cwd=tmp_path, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [
        f"ftsweep.ui: error: no MLflow store at {tmp_path}/none/mlflow.db; pass --tracking-uri (sqlite:///... or "
        f"http://...)."]), out.stderr[-2000:]
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_a_network_host_is_refused_without_a_login_in_front(tmp_path, host, capsys):
    """An unauthenticated, writable MLflow (whose models are code) on the network: refused in one
    line before anything starts; --behind-auth says a proxy asks for the login."""
    from ftsweep.ui import _local, main

    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    with pytest.raises(SystemExit) as stopped:
        main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--host", host])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"ftsweep.ui: error: --host {host} would serve this store to the network with no login, and MLflow's UI "
        f"can change it (and its models are code that runs where they are loaded); keep --host 127.0.0.1 (reach "
        f"it through an SSH tunnel), or put it behind a proxy that asks for a login and add --behind-auth.\n")
    assert _local("127.0.0.1") and _local("localhost") and _local("::1") and _local("127.0.0.2")


def test_a_busy_port_is_one_line(tmp_path):
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    with socket.socket() as held:  # another server listens on the port
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = run_cli("ftsweep.ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port),
                      cwd=tmp_path, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (1, [
        f"ftsweep.ui: error: cannot serve on 127.0.0.1:{port} (Address already in use; another MLflow UI may be "
        f"running there); pick a free port with --port, e.g. --port {port + 1}."]), out.stderr[-2000:]


def _ctrl_c(command: list[str], ready: str, cwd) -> list[str]:
    """Start a serving command, wait for the server's `ready` line, press Ctrl-C: its exit code must
    be 130; returns what it wrote on stderr after that line."""
    server = subprocess.Popen([sys.executable, "-m", *command], cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stderr] and lines.put(None), daemon=True).start()
    err = []
    # Generous: the MLflow UI takes about 15 s to start on a busy 2-core machine; the test waits for
    # its line, never a fixed time, so a fast machine passes fast and a slow one does not fail.
    deadline = time.monotonic() + 120
    try:
        while not any(ready in line for line in err):
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "".join(err)[-2000:]
            err.append(line)
        server.send_signal(signal.SIGINT)  # Ctrl-C: the terminal sends SIGINT to the foreground process
        assert server.wait(timeout=120) == 130, "".join(err)[-2000:]
    finally:
        server.kill()
    while (line := lines.get(timeout=30)) is not None:
        err.append(line)
    after = err[next(i for i, line in enumerate(err) if ready in line) + 1:]
    return [line.rstrip("\n") for line in after]


def test_ctrl_c_stops_a_serving_ui_in_one_line(tmp_path):
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    command = ["ftsweep.ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(free_port())]
    assert _ctrl_c(command, "Uvicorn running on", tmp_path) == ["ftsweep.ui: interrupted; the MLflow UI is stopped."]


# make dashboard: python -m ftsweep.dashboard (84 to 153 lines of optuna-dashboard's before)

@pytest.fixture
def storage(tmp_path):
    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s")
    (tmp_path / "garbage.db").write_text("not a database\n")
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    return tmp_path


@pytest.mark.parametrize(("given", "line"), [
    ("sqlite:///{tmp}/none/optuna.db", "no Optuna storage at {tmp}/none/optuna.db; run a search first (it makes "
     "one), or name a search's storage (hydra.sweeper.storage; make dashboard STORAGE=sqlite:///path/optuna.db)."),
    ("{tmp}/garbage.db", "{tmp}/garbage.db is not an SQLite database (file is not a database); name a search's "
     "storage (hydra.sweeper.storage, e.g. sqlite:///outputs/optuna.db)."),
    ("sqlite:///{tmp}/mlflow.db", "{tmp}/mlflow.db is an SQLite database but no Optuna storage (it has no studies); "
     "name a search's storage (hydra.sweeper.storage, e.g. sqlite:///outputs/optuna.db)."),
    ("sqlite:///{tmp}", "sqlite:///{tmp} is a folder; name the search's SQLite file in it, e.g. "
     "sqlite:///{tmp}/optuna.db."),
])
def test_the_dashboard_refuses_what_is_not_a_search_storage(storage, capsys, given, line):
    from ftsweep.dashboard import main

    with pytest.raises(SystemExit) as stop:
        main([given.format(tmp=storage), "--port", str(free_port())])
    assert (stop.value.code, capsys.readouterr().err) == (2, f"ftsweep.dashboard: error: {line.format(tmp=storage)}\n")
    assert not (storage / "none").exists()


def test_make_dashboard_is_one_line_and_serves_till_ctrl_c(storage):
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "dashboard", f"PY={sys.executable}",
                          f"STORAGE=sqlite:///{storage}/none/optuna.db"], env=cli_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.stderr.splitlines()[0] == (
        f"ftsweep.dashboard: error: no Optuna storage at {storage}/none/optuna.db; run a search first (it makes "
        f"one), or name a search's storage (hydra.sweeper.storage; make dashboard STORAGE=sqlite:///path/optuna.db).")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    with socket.socket() as held:  # another server listens on the port
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = run_cli("ftsweep.dashboard", f"sqlite:///{storage}/optuna.db", "--port", str(port), cwd=storage)
    assert (out.returncode, out.stderr) == (1, (
        f"ftsweep.dashboard: error: cannot serve on 127.0.0.1:{port} (Address already in use; another Optuna "
        f"Dashboard may be running there); pick a free port with --port, e.g. --port {port + 1}.\n"))
    command = ["ftsweep.dashboard", f"sqlite:///{storage}/optuna.db", "--port", str(free_port())]
    assert _ctrl_c(command, "Booting worker", storage) == ["ftsweep.dashboard: interrupted; Optuna Dashboard is stopped."]


_STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
_SERVE = "import sys; from ftsweep.jobs import serve; sys.exit(serve([sys.executable, '-c', sys.argv[1]], ('x', 'y'), 1.0))"


def test_a_server_that_ignores_the_stop_is_killed_after_the_grace(tmp_path):
    """uvicorn's graceful stop waits for open connections without end: a server still up `grace`
    seconds after the UI's SIGTERM is killed, with its group, and the UI ends as stopped by SIGTERM."""
    ui = subprocess.Popen([sys.executable, "-c", _SERVE, _STUBBORN], cwd=tmp_path, env=cli_env(),
                          stderr=subprocess.PIPE, text=True)
    try:
        assert ui.stderr.readline().strip() == "up"  # the server runs, its SIGTERM ignored
        server = int(subprocess.run(["pgrep", "-P", str(ui.pid)], capture_output=True, text=True).stdout.split()[0])
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=120)  # the grace is 1 s: a bound for a loaded box; without the kill it never ends
    finally:
        ui.kill()
    assert ui.returncode == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.killpg(server, 0)  # the server's whole group is gone
