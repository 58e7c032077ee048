"""`python -m ftsweep.ui` as a user meets it: a missing store, a busy port and Ctrl-C are each one
line with the right exit code (the server's bind error at exit 0, an empty store made, and 46 lines
of uvicorn's before)."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ftsweep.tracking.store import Tracker

from helpers import cli_env, free_port, run_cli

pytestmark = pytest.mark.slow


def test_a_missing_store_is_refused_not_made(tmp_path):
    out = run_cli("ftsweep.ui", "--tracking-uri", f"sqlite:///{tmp_path}/none/mlflow.db", cwd=tmp_path, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [
        f"ftsweep.ui: error: no MLflow store at {tmp_path}/none/mlflow.db; pass --tracking-uri (sqlite:///... or "
        f"http://...)."]), out.stderr[-2000:]
    assert not (tmp_path / "none").exists()


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


def test_ctrl_c_stops_a_serving_ui_in_one_line(tmp_path):
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "ftsweep.ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                           "--port", str(port)], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in ui.stderr] and lines.put(None), daemon=True).start()
    err = []
    # Generous: the MLflow UI takes about 15 s to start on a busy 2-core machine; the test waits for
    # its line, never a fixed time, so a fast machine passes fast and a slow one does not fail.
    deadline = time.monotonic() + 120
    try:
        while not any("Uvicorn running on" in line for line in err):
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "".join(err)[-2000:]
            err.append(line)
        ui.send_signal(signal.SIGINT)  # Ctrl-C: the terminal sends SIGINT to the foreground process
        assert ui.wait(timeout=120) == 130
    finally:
        ui.kill()
    while (line := lines.get(timeout=30)) is not None:
        err.append(line)
    after = err[next(i for i, line in enumerate(err) if "Uvicorn running on" in line) + 1:]
    assert [line.rstrip("\n") for line in after] == ["ftsweep.ui: interrupted; the MLflow UI is stopped."], "".join(err)
