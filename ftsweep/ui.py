"""`python -m ftsweep.ui` (`make ui`): the MLflow UI on ftsweep's store, and a link per experiment
that lands on its runs table, sorted by mean CV RMSE (not MLflow 3's GenAI overview)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from ftsweep.errors import FtsweepError
from ftsweep.locks import sqlite_path
from ftsweep.sweep.table import default_tracking_uri
from ftsweep.tracking.store import Tracker, runs_link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftsweep.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="default: the SQLite store under ./outputs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    try:
        tracker = Tracker(args.tracking_uri or default_tracking_uri(), None)
    except FtsweepError as exc:
        print(f"ftsweep.ui: error: {exc}", file=sys.stderr)
        return 2
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
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", tracker.uri, "--host", args.host, "--port", str(args.port),
                      "--workers", "1"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
