"""`python -m ftsweep.ui` (`make ui`): the MLflow UI on ftsweep's store, and a link per experiment
that lands on its runs table, sorted by mean CV RMSE (not MLflow 3's GenAI overview)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ftsweep.errors import FtsweepError, exit_with
from ftsweep.locks import sqlite_path
from ftsweep.sweep.table import default_tracking_uri
from ftsweep.tracking.store import Tracker, runs_link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftsweep.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="default: the SQLite store under ./outputs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    try:  # a missing store is refused, as ftsweep.table and ftsweep.predict do, not made empty
        tracker = Tracker(args.tracking_uri or default_tracking_uri(), None, create=False)
    except FtsweepError as exc:
        exit_with(exc, command="ftsweep.ui")
    busy = port_problem(args.host, args.port) if sqlite_path(tracker.uri) else None
    if busy is not None:  # the server would print its bind error and exit 0
        exit_with(busy, 1, command="ftsweep.ui")
    base = f"http://{args.host}:{args.port}" if sqlite_path(tracker.uri) else tracker.uri
    experiments = tracker.experiments()
    print("ftsweep experiments (each link opens its runs):" if experiments else "no ftsweep experiments yet")
    for name, experiment_id in experiments:
        print(f"  {name}: {runs_link(tracker.uri, experiment_id, base)}")
    if sqlite_path(tracker.uri) is None:
        return 0  # a server store already has its UI
    sys.stdout.flush()
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return serve([mlflow, "ui", "--backend-store-uri", tracker.uri, "--host", args.host, "--port", str(args.port),
                  "--workers", "1"])


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (None: it can), found out by binding it."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind(address)
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return (f"cannot serve on {host}:{port} ({why}; another MLflow UI may be running there); pick a free "
                f"port with --port, e.g. --port {port + 1 if 0 < port < 65535 else 5001}.")
    return None


def serve(command: list[str], grace: float = 10.0) -> int:
    """Run the server in a process group of its own and stop the whole group (the MLflow UI and
    its uvicorn worker) on SIGTERM, SIGINT or SIGHUP to this process: `mlflow ui` alone, killed,
    leaves its worker serving the port. Killed itself (SIGKILL), this process cannot forward: the
    server then gets SIGTERM from the kernel (Linux) and stops its worker. Its output is passed on
    until a signal comes (then its shutdown's lines are dropped); Ctrl-C (SIGINT) stops it with
    SIGTERM, a quiet stop, and is one line, exit 130. Returns the server's exit code (128 + the
    signal when stopped)."""
    server = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with(os.getpid()),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    received: list[int] = []
    threading.Thread(target=_pass_on, args=(server.stdout, received), daemon=True).start()

    def forward(signum, _frame) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = server.wait()
    # The server may end before its worker: wait for the group, then KILL what is left.
    deadline = time.monotonic() + grace
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(server.pid, 0)
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
    if received and received[0] == signal.SIGINT:
        print("ftsweep.ui: interrupted; the MLflow UI is stopped.", file=sys.stderr, flush=True)
    return 128 + received[0] if received else (128 - code if code < 0 else code)


def _pass_on(pipe, received: list[int]) -> None:
    """The server's output onto this process's stderr, line by line, until a signal came."""
    for line in iter(pipe.readline, b""):
        if not received:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()


def _die_with(parent: int):
    """A preexec_fn: the server gets SIGTERM when `parent` dies, however it dies (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing)."""
    def arrange() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)
    return arrange


if __name__ == "__main__":
    sys.exit(main())
