"""`python -m ftsweep.table --experiment NAME`: the results table of a sweep, from MLflow
(see ftsweep.sweep.table for how rows are built and compared)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftsweep.config.resolvers import default_outputs
from ftsweep.errors import FtsweepError, exit_with
from ftsweep.sweep.compare import DEFAULT_ROPE, check_rope
from ftsweep.sweep.table import BASELINE_LABEL, default_tracking_uri, safe_name, write_table
from ftsweep.tracking.store import Tracker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftsweep.table", description="the results table of a sweep, from MLflow")
    parser.add_argument("--experiment", default="ftsweep", help="MLflow experiment (a sweep's name)")
    parser.add_argument("--tracking-uri", default=None, help="default: the SQLite store under ./outputs")
    parser.add_argument("--out", default=None, help="folder for results.md/.csv/.png (default: outputs/tables/<experiment>)")
    parser.add_argument("--baseline", default=None, help=f"label of the baseline row (default: {BASELINE_LABEL!r} or the first)")
    parser.add_argument("--rope", default=str(DEFAULT_ROPE), help="region of practical equivalence in RMSE units: "
                        f"a |Δ| below it counts as no practical difference (default: {DEFAULT_ROPE}, as table.rope)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the table to MLflow")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    try:
        rope = check_rope(args.rope, "--rope")
        tracker = Tracker(uri, args.experiment, create=False)
        out = Path(args.out) if args.out else Path(default_outputs()) / "tables" / safe_name(args.experiment)
        markdown, paths = write_table(tracker, out, args.baseline, not args.no_mlflow, rope)
    except FtsweepError as exc:
        exit_with(exc, command="ftsweep.table")
    print(f"{args.experiment}\n\n{markdown}\n\nwritten: {paths['md']}, {paths['csv']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
