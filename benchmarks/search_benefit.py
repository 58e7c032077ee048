"""What search with fold-level pruning buys, on the embedded default (MiniLM-L6, demo data):

    python benchmarks/search_benefit.py                 # 20-trial TPE search + the table1 grid (~1 h on 2 CPU cores with hydra/launcher=joblib, 2 jobs)
    python benchmarks/search_benefit.py --trials 4 --extra model=tiny cv.n_folds=3 ...   # a quick look

1. `python -m ftsweep +sweep=search_llrd` (TPE, the default paired pruning after each fold;
   `--search-extra hydra/sweeper/pruner=none` runs every trial to the end, as
   benchmarks/RESULTS.md did): folds trained against trials x folds without pruning;
2. `python -m ftsweep -m +sweep=table1` on the same data and folds (fold_seed) into the same store;
3. the best trial's CV RMSE against the best table1 preset's, paired by fold (mean difference
   with its 95% t-interval), as the results table computes it.

Both commands resume: a rerun reuses every finished fold and trial, so an interrupted
benchmark is continued by running it again. Prints a table and writes
benchmarks/results/<date>-search-benefit.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftsweep.sweep.table import fold_frame, paired_difference  # noqa: E402
from ftsweep.tracking.store import Tracker  # noqa: E402


def run(args: list[str], out: Path) -> float:
    started = time.time()
    cmd = [sys.executable, "-m", "ftsweep", *args, f"paths.output_root={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    tail = "\n".join(done.stdout.splitlines()[-30:])
    print(tail, flush=True)
    if done.returncode != 0:
        sys.exit(f"benchmark: {' '.join(args[:3])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return time.time() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-search")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for both commands (e.g. model=tiny)")
    parser.add_argument("--search-extra", nargs="*", default=[], help="overrides for the search only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out.absolute()
    search_s = run(["+sweep=search_llrd", f"hydra.sweeper.n_trials={args.trials}", *args.extra, *args.search_extra],
                   out)
    grid_s = run(["-m", "+sweep=table1", *args.extra], out)

    uri = f"sqlite:///{out}/mlflow.db"
    search = fold_frame(Tracker(uri, "search_llrd", create=False))
    search = search[search["study"] == "search_llrd"]
    grid = fold_frame(Tracker(uri, "table1", create=False))
    grid = grid[~grid["pruned"]]
    complete = search[~search["pruned"]]
    n_folds = int(search["fold"].max()) + 1
    trials = search["trial"].nunique()
    best_trial = complete.groupby("trial")["rmse_best"].mean().idxmin()
    best_rows = complete[complete["trial"] == best_trial]
    preset_means = grid.groupby("label")["rmse_best"].mean()
    best_preset = preset_means.idxmin()
    diff = paired_difference(best_rows, grid[grid["label"] == best_preset])
    result = {
        "date": dt.date.today().isoformat(), "command_search": f"+sweep=search_llrd n_trials={args.trials}",
        "extra": args.extra, "search_extra": args.search_extra,
        "trials_with_folds": int(trials), "trials_complete": int(complete["trial"].nunique()),
        "trials_pruned": int(search.loc[search["pruned"], "trial"].nunique()),
        "folds_trained": int(len(search)), "folds_without_pruning": int(trials * n_folds),
        "search_seconds": round(search_s, 1), "table1_seconds": round(grid_s, 1),
        "best_trial": int(best_trial), "best_trial_rmse": float(best_rows["rmse_best"].mean()),
        "best_preset": best_preset, "best_preset_rmse": float(preset_means[best_preset]),
        "delta_best_trial_minus_best_preset": diff.mean, "delta_95ci": [diff.low, diff.high], "paired_folds": diff.n,
    }
    print("\n| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    path = args.json or ROOT / "benchmarks" / "results" / f"{result['date']}-search-benefit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return result


if __name__ == "__main__":
    main()
