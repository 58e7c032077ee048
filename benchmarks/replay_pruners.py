"""Replay pruning decisions on a finished search, without training: which trials would each pruner
have stopped, after which fold, and what would that have cost?

    python benchmarks/replay_pruners.py --experiment search_llrd            # every pruner below
    python benchmarks/replay_pruners.py --experiment s6 --pruners median --median-startup 1

Every fold run of a search trial logs its rmse_best and its validation predictions
(predictions.csv), so the trials of one search (best run with hydra/sweeper/pruner=none, so that
every trial is complete) are fed again, in trial order, to fresh in-memory studies, one per
pruner: median (the running mean RMSE after each fold, as the live search reports it), wilcoxon
(Optuna's, over folds: each fold's own RMSE), paired (ftsweep's, over rows: the folds' per-row
squared errors) and none. Per pruner: folds trained, the best trial it would have found, and
its false prunes: pruned trials that, run to the end, beat the eventual best or finished within
its noise (the fold-paired 95 % interval of their difference holds 0).

A trial the live search stopped earlier than a pruner would is "unknown" from there on (its
later folds were never trained). Prints a Markdown table and writes
benchmarks/results/<date>-replay-pruners.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftsweep.data.loading import ID  # noqa: E402
from ftsweep.search.paired import TESTS, PairedPruner, build_pruner, encode_errors  # noqa: E402
from ftsweep.sweep.table import default_tracking_uri, paired_difference  # noqa: E402
from ftsweep.tags import FOLD_TAG, PRUNED_TAG, ROW_ERRORS_ATTR, STUDY_TAG, TRIAL_TAG  # noqa: E402
from ftsweep.tracking.aggregate import PREDICTIONS  # noqa: E402
from ftsweep.tracking.store import Tracker  # noqa: E402

PRUNERS = ("median", "wilcoxon", "paired", "none")


@dataclass
class StoredTrial:
    """One trial lineage of the search as MLflow holds it: its finished folds in fold order."""

    number: int
    complete: bool  # the parent FINISHED with every fold (not pruned live)
    folds: list[int]
    rmse: list[float]  # each fold's rmse_best
    fold_runs: list[str]
    predictions: list[pd.DataFrame] = field(default_factory=list)  # loaded for the paired pruner only

    @property
    def mean(self) -> float:
        return float(np.mean(self.rmse))


@dataclass
class Replay:
    pruner: str
    folds_trained: int = 0
    pruned: dict[int, int] = field(default_factory=dict)  # trial -> fold position it was stopped after
    complete: dict[int, float] = field(default_factory=dict)  # trial -> mean CV RMSE
    unknown: list[int] = field(default_factory=list)  # the live search stopped it before this pruner would


def load_trials(tracker: Tracker, study: str | None, with_predictions: bool) -> tuple[str, list[StoredTrial]]:
    """The search's trial lineages in trial order (the study's name: given, or the only one there)."""
    runs = tracker.all_runs()
    studies = sorted({r.data.tags[STUDY_TAG] for r in runs if TRIAL_TAG in r.data.tags})
    if study is None:
        if len(studies) != 1:
            sys.exit(f"replay: experiment {tracker.experiment_name!r} holds the studies {studies}; pick one "
                     f"with --study")
        study = studies[0]
    elif study not in studies:
        sys.exit(f"replay: no trial of study {study!r} in experiment {tracker.experiment_name!r} ({studies})")
    mine = [r for r in runs if r.data.tags.get(STUDY_TAG) == study and TRIAL_TAG in r.data.tags]
    parents = {r.info.run_id: r for r in mine if FOLD_TAG not in r.data.tags}
    by_trial: dict[int, list] = {}
    for run in mine:
        parent = parents.get(run.data.tags.get("mlflow.parentRunId", ""))
        if parent is None or run.info.status != "FINISHED" or "rmse_best" not in run.data.metrics:
            continue
        by_trial.setdefault(int(run.data.tags[TRIAL_TAG]), []).append(run)
    n_folds = max((len({r.data.tags[FOLD_TAG] for r in fold_runs}) for fold_runs in by_trial.values()),
                  default=0)
    trials = []
    for number in sorted(by_trial):
        fold_runs = {int(r.data.tags[FOLD_TAG]): r for r in by_trial[number]}  # newest first: oldest kept
        folds = sorted(fold_runs)
        parent = parents[fold_runs[folds[0]].data.tags["mlflow.parentRunId"]]
        complete = parent.info.status == "FINISHED" and PRUNED_TAG not in parent.data.tags and len(folds) == n_folds
        trial = StoredTrial(number, complete, folds, [fold_runs[f].data.metrics["rmse_best"] for f in folds],
                            [fold_runs[f].info.run_id for f in folds])
        if with_predictions:
            trial.predictions = [_predictions(tracker, run_id) for run_id in trial.fold_runs]
        trials.append(trial)
    return study, trials


def _predictions(tracker: Tracker, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_csv(tracker.download(run_id, PREDICTIONS, Path(tmp)), dtype={ID: str})


def make_pruner(name: str, args: argparse.Namespace, min_delta: float | None = None) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=args.median_startup, n_warmup_steps=0)
    if name == "wilcoxon":
        return build_pruner({"_target_": "optuna.pruners.WilcoxonPruner", "p_threshold": args.wilcoxon_p,
                             "n_startup_steps": args.wilcoxon_startup})
    if name == "paired":
        return PairedPruner(alpha=args.alpha, min_delta=min_delta, test=args.test)
    return optuna.pruners.NopPruner()


def replay(trials: list[StoredTrial], name: str, pruner: optuna.pruners.BasePruner) -> Replay:
    """The trials in order through a fresh study with `pruner`, reported as the live search reports."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    result = Replay(name)
    per_fold = isinstance(pruner, optuna.pruners.WilcoxonPruner)
    for stored in trials:
        trial = study.ask()
        stopped = False
        for position in range(len(stored.folds)):
            result.folds_trained += 1
            if getattr(pruner, "needs_row_errors", False):
                trial.set_user_attr(ROW_ERRORS_ATTR.format(step=position), encode_errors(stored.predictions[position]))
            running = float(np.mean(stored.rmse[: position + 1]))  # as run_cv's result.mean("rmse_best")
            trial.report(stored.rmse[position] if per_fold else running, position)
            if position < len(stored.folds) - 1 or not stored.complete:
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    result.pruned[stored.number] = position
                    stopped = True
                    break
        if stopped:
            continue
        if stored.complete:
            study.tell(trial, stored.mean)
            result.complete[stored.number] = stored.mean
        else:  # stopped live before this pruner would have: its remaining folds are unknown
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            result.unknown.append(stored.number)
    return result


def false_prunes(result: Replay, trials: list[StoredTrial]) -> list[int]:
    """Pruned trials that, run to the end, beat the eventual best or finished within its noise."""
    complete = {t.number: t for t in trials if t.complete}
    if not complete:
        return []
    best = min(complete.values(), key=lambda t: t.mean)
    base = _folds(best)
    wrong = []
    for number in result.pruned:
        trial = complete.get(number)
        if trial is None:
            continue
        diff = paired_difference(_folds(trial), base)
        if trial.mean <= best.mean or not (diff.low > 0):  # an interval holding 0 (or none: 1 fold) is noise
            wrong.append(number)
    return wrong


def _folds(trial: StoredTrial) -> pd.DataFrame:
    return pd.DataFrame({"seed": 0, "fold": trial.folds, "rmse_best": trial.rmse})


def closest_pruned(result: Replay, trials: list[StoredTrial]) -> tuple[int, float] | None:
    """The pruned trial that, run to the end, came closest to the eventual best: (trial, its
    mean CV RMSE minus the best's). The cost of a pruner's mistakes in RMSE, beside their count:
    a fold-paired interval over 5 folds is wide, and one diverged fold widens it further."""
    complete = {t.number: t for t in trials if t.complete}
    if not complete:
        return None
    best = min(complete.values(), key=lambda t: t.mean)
    gaps = [(number, complete[number].mean - best.mean) for number in result.pruned if number in complete]
    return min(gaps, key=lambda item: item[1]) if gaps else None


def summarize(results: list[Replay], trials: list[StoredTrial]) -> list[dict]:
    complete = [t for t in trials if t.complete]
    eventual = min(complete, key=lambda t: t.mean) if complete else None
    rows = []
    for result in results:
        best = min(result.complete.items(), key=lambda item: item[1]) if result.complete else None
        closest = closest_pruned(result, trials)
        rows.append({"pruner": result.pruner, "folds_trained": result.folds_trained,
                     "trials_pruned": len(result.pruned), "best_trial": best[0] if best else None,
                     "best_rmse": best[1] if best else None,
                     "found_eventual_best": bool(best and eventual and best[0] == eventual.number),
                     "false_prunes": false_prunes(result, trials),
                     "closest_pruned": {"trial": closest[0], "delta": closest[1]} if closest else None,
                     "unknown": result.unknown, "pruned_after": {str(k): v for k, v in result.pruned.items()}})
    return rows


def to_markdown(rows: list[dict], n_trials: int, n_folds: int) -> str:
    lines = [f"| pruner | folds trained (of {n_trials * n_folds}) | trials pruned | best trial found (RMSE) | "
             f"false prunes | closest pruned trial (Δ to best) | unknown (stopped live earlier) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        best = f"trial {row['best_trial']} ({row['best_rmse']:.4f})" if row["best_trial"] is not None else "none"
        false = ", ".join(map(str, row["false_prunes"])) or "none"
        closest = row["closest_pruned"]
        near = f"trial {closest['trial']} ({closest['delta']:+.4f})" if closest else "–"
        unknown = ", ".join(map(str, row["unknown"])) or "none"
        lines.append(f"| {row['pruner']} | {row['folds_trained']} | {row['trials_pruned']} | {best} | "
                     f"{len(row['false_prunes'])}: {false} | {near} | {unknown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the search's MLflow experiment")
    parser.add_argument("--study", default=None, help="the study (default: the experiment's only one)")
    parser.add_argument("--tracking-uri", default=None, help="default: the project's store (outputs/mlflow.db)")
    parser.add_argument("--pruners", nargs="*", default=list(PRUNERS), choices=PRUNERS)
    parser.add_argument("--median-startup", type=int, default=5, help="MedianPruner n_startup_trials (median.yaml)")
    parser.add_argument("--wilcoxon-p", type=float, default=0.1)
    parser.add_argument("--wilcoxon-startup", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--min-delta", type=float, nargs="+", default=[0.01],
                        help="the paired pruner's margin(s): one row per value")
    parser.add_argument("--test", default="t", choices=TESTS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    tracker = Tracker(args.tracking_uri or default_tracking_uri(), args.experiment, create=False)
    study, trials = load_trials(tracker, args.study, "paired" in args.pruners)
    if not trials:
        sys.exit(f"replay: study {study!r} has no finished folds")
    runs = [(name, None) for name in args.pruners if name != "paired"]
    if "paired" in args.pruners:
        at = args.pruners.index("paired")
        several = len(args.min_delta) > 1
        runs[at:at] = [(f"paired δ={delta:g}" if several else "paired", delta) for delta in args.min_delta]
    results = [replay(trials, label, make_pruner(label.split()[0], args, delta)) for label, delta in runs]
    rows = summarize(results, trials)
    n_folds = max(len(t.folds) for t in trials)
    print(f"Replay of study {study!r}: {len(trials)} trials, {sum(t.complete for t in trials)} complete, "
          f"{n_folds} folds\n\n{to_markdown(rows, len(trials), n_folds)}")
    out = {"date": dt.date.today().isoformat(), "experiment": args.experiment, "study": study,
           "trials": len(trials), "complete": sum(t.complete for t in trials), "n_folds": n_folds,
           "settings": {k: v for k, v in vars(args).items() if k not in ("json", "tracking_uri")}, "pruners": rows}
    path = args.json or ROOT / "benchmarks" / "results" / f"{out['date']}-replay-pruners.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwritten: {path}")
    return out


if __name__ == "__main__":
    main()
