"""`python -m ftsweep.ui` (`make ui`): the MLflow UI on ftsweep's store, and a link per experiment
that lands on its runs table, sorted by mean CV RMSE (not MLflow 3's GenAI overview)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import socket
import sys

from ftsweep.errors import FtsweepError, exit_with
from ftsweep.jobs import port_problem, serve
from ftsweep.locks import sqlite_path
from ftsweep.sweep.table import default_tracking_uri
from ftsweep.tracking.store import Tracker, runs_link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftsweep.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="default: the SQLite store under ./outputs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--behind-auth", action="store_true",
                        help="serve on a non-local --host: only behind a proxy that asks for a login")
    args = parser.parse_args(argv)
    if not (_local(args.host) or args.behind_auth):
        exit_with(f"--host {args.host} would serve this store to the network with no login, and MLflow's UI "
                  f"can change it (and its models are code that runs where they are loaded); keep --host "
                  f"127.0.0.1 (reach it through an SSH tunnel), or put it behind a proxy that asks for a login "
                  f"and add --behind-auth.", command="ftsweep.ui")
    try:  # a missing store is refused, as ftsweep.table and ftsweep.predict do, not made empty
        tracker = Tracker(args.tracking_uri or default_tracking_uri(), None, create=False)
    except FtsweepError as exc:
        exit_with(exc, command="ftsweep.ui")
    busy = port_problem(args.host, args.port, "another MLflow UI") if sqlite_path(tracker.uri) else None
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
                  "--workers", "1"], ("ftsweep.ui", "the MLflow UI"))


def _local(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1) or a name that resolves only to one."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # the server could not bind it either: refused here with the advice
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


if __name__ == "__main__":
    sys.exit(main())
