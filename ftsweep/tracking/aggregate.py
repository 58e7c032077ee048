"""A config's CV over its folds: each fold's validation predictions, a finished fold read back from
its run, and the values the parent run gets (rmse_mean, its sd, the OOF score, oof.csv). One code
path for a run that trained every fold and for the job that finished the last fold of a config
whose folds ran as separate jobs: the folds in fold order, so both give the same numbers."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ftsweep.data.loading import ID, TARGET
from ftsweep.tracking.store import Tracker
from ftsweep.train.loop import FoldResult, fold_mean, fold_std, rmse

log = logging.getLogger("ftsweep")
PREDICTIONS = "predictions.csv"  # each fold run's validation predictions (resume rebuilds OOF from them)
CV_VALUES = ("rmse_mean", "rmse_std", "rmse_last_mean", "rmse_last_std", "rmse_oof", "rmse_oof_last", "n_folds_run")


@dataclass
class Unclaimed:
    """A unit this process does not run: finished earlier (its folds and OOF score read back) or held
    by another live process (who holds it)."""

    parent_id: str
    held_by: str | None = None
    folds: dict[int, FoldResult] = field(default_factory=dict)
    rmse_oof: float = float("nan")
    cv: dict[str, float] | None = None  # the parent's CV over every fold, when it holds one
    finished: str = ""  # "2 of 3": the config's folds finished so far, when not all are


@dataclass
class Closing:
    """How a job left its unit: the OOF score (of every fold once all have finished, else of this
    job's folds, not logged), the CV over every fold (None: folds are missing), how many are
    finished, and how to register the model where tracking.register_as failed."""

    rmse_oof: float
    cv: dict[str, float] | None
    finished: str = ""
    registry_error: str | None = None


def fold_predictions(frame: pd.DataFrame, res: FoldResult) -> pd.DataFrame:
    """A fold's validation rows with their best-checkpoint and last-weights predictions."""
    out = frame.loc[res.val_rows, [ID, "fold", TARGET]].copy()
    out["pred_best"], out["pred_last"] = res.pred_best, res.pred_last
    return out


def cv_values(frame: pd.DataFrame, folds: dict[int, FoldResult]) -> tuple[dict[str, float], pd.DataFrame]:
    """The CV of `folds` (taken in fold order) and their out-of-fold predictions, row order."""
    folds = {f: folds[f] for f in sorted(folds)}
    scored = pd.concat([fold_predictions(frame, r) for r in folds.values()]).sort_index()
    target = scored[TARGET].to_numpy()
    return {"rmse_mean": fold_mean(folds), "rmse_std": fold_std(folds),
            "rmse_last_mean": fold_mean(folds, "rmse_last"), "rmse_last_std": fold_std(folds, "rmse_last"),
            "rmse_oof": rmse(scored["pred_best"].to_numpy(), target),
            "rmse_oof_last": rmse(scored["pred_last"].to_numpy(), target), "n_folds_run": len(folds)}, scored


def log_cv(tracker: Tracker, parent: str, frame: pd.DataFrame, folds: dict[int, FoldResult]) -> dict[str, float]:
    """The CV of `folds` on the parent run: its values and oof.csv."""
    values, scored = cv_values(frame, folds)
    tracker.log_values(parent, values)
    with tempfile.TemporaryDirectory() as tmp:
        scored.to_csv(Path(tmp) / "oof.csv", index=False)
        tracker.log_artifact(parent, Path(tmp) / "oof.csv")
    return values


def stored_fold(tracker: Tracker, run, frame: pd.DataFrame | None, fold: int | None = None) -> FoldResult | None:
    """A fold that finished in an earlier attempt or another job, read back from MLflow. With `frame`:
    its predictions too, and None when its validation rows are not this fold's rows (then the fold is
    trained again, never mixed in)."""
    m = run.data.metrics
    res = FoldResult(rmse_best=m["rmse_best"], rmse_last=m["rmse_last"], rmse_swa=m.get("rmse_swa"),
                     pred_best=np.array([]), pred_last=np.array([]), best_step=int(m.get("best_step", -1)),
                     steps=int(m.get("steps", 0)), evaluations=int(m.get("evaluations", 0)),
                     seconds=float(m.get("fold_seconds", 0.0)))
    if frame is not None:
        with tempfile.TemporaryDirectory() as tmp:
            preds = pd.read_csv(tracker.download(run.info.run_id, PREDICTIONS, Path(tmp)), dtype={ID: str})
        expected = frame.loc[frame["fold"] == fold, ID]
        if len(preds) != len(expected) or set(preds[ID]) != set(expected):
            log.warning("fold %s of run %s scored other rows than this fold holds: training it again", fold,
                        run.info.run_id)
            return None
        rows = pd.Series(np.arange(len(frame)), index=frame[ID]).loc[preds[ID]].to_numpy()
        res.val_rows, res.pred_best, res.pred_last = rows, preds["pred_best"].to_numpy(), preds["pred_last"].to_numpy()
    return res
