"""`python -m ftsweep.dashboard [STORAGE]` (`make dashboard`): Optuna Dashboard over a search's study
storage, checked first: a missing or foreign file, or a busy port, is one line, not the server's
traceback; Ctrl-C is one line too."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from ftsweep.config.resolvers import default_outputs
from ftsweep.errors import FtsweepError, exit_with
from ftsweep.jobs import port_problem, serve
from ftsweep.search.study import existing_storage

COMMAND = "ftsweep.dashboard"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftsweep.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("storage", nargs="?", default=None,
                        help="a search's hydra.sweeper.storage (default: the SQLite file outputs/optuna.db)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        url = existing_storage(args.storage or f"sqlite:///{default_outputs()}/optuna.db")
    except FtsweepError as exc:
        exit_with(exc, command=COMMAND)
    busy = port_problem(args.host, args.port, "another Optuna Dashboard")
    if busy is not None:
        exit_with(busy, 1, command=COMMAND)
    dashboard = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable)) or shutil.which("optuna-dashboard")
    if dashboard is None:
        exit_with("optuna-dashboard is not installed here; install it: pip install optuna-dashboard (make install "
                  "does).", 1, command=COMMAND)
    print(f"Optuna Dashboard over {url}: http://{args.host}:{args.port}", flush=True)
    return serve([dashboard, url, "--host", args.host, "--port", str(args.port)], (COMMAND, "Optuna Dashboard"))


if __name__ == "__main__":
    sys.exit(main())
