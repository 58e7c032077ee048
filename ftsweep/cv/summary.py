"""The few lines printed when a CV run ends, and how the command ends with them."""

from __future__ import annotations

import shlex

from omegaconf import DictConfig

from ftsweep.cv.result import CvResult
from ftsweep.errors import RegistryError
from ftsweep.locks import sqlite_path


def print_summary(cfg: DictConfig, result: CvResult) -> None:
    if result.held_by is not None:
        run = result.parent_run_id or "(not written yet)"  # a server claim won, its parent run still to come
        print(f"ftsweep: {cfg.get('label') or 'run'} — skipped: run {run} is being run by "
              f"{result.held_by}", flush=True)
        return
    lines = [f"ftsweep: {cfg.get('label') or 'run'} — {len(result.folds)} fold(s), model {cfg.model.name}"]
    for fold, res in sorted(result.folds.items()):
        swa = "  (SWA weights)" if res.rmse_swa is not None else ""
        lines.append(f"  fold {fold}: RMSE best {res.rmse_best:.4f}  last {res.rmse_last:.4f}{swa}  [{res.seconds:.0f}s]")
    lines += _cv_lines(result)
    uri = result.tracking_uri or cfg.tracking.uri
    lines.append(f"  MLflow run {result.parent_run_id} in experiment '{cfg.tracking.experiment}'")
    if sqlite_path(uri) is not None:
        lines.append(f"  open the UI:  make ui  (or: python -m ftsweep.ui --tracking-uri {shlex.quote(uri)}), then")
    lines.append(f"  the runs:     {result.link}")
    print("\n".join(lines), flush=True)


def _cv_lines(result: CvResult) -> list[str]:
    """The config's CV: over every fold once all have finished (trained by this job or others), a
    search's partial mean when pruned, else how many folds are finished so far."""
    if result.pruned_at is not None:  # a partial mean: not a CV result
        return [f"  pruned after fold {result.pruned_at}: running mean RMSE {result.mean():.4f} (not a CV mean)"]
    cv = result.cv
    if cv is None:
        return [f"  {result.finished} folds of this config finished: its CV (rmse_mean, OOF) is written to the "
                f"run when the last one is (the other folds' jobs, or the same command without cv.folds)"]
    n, nan = int(cv.get("n_folds_run", len(result.folds))), float("nan")
    scope = "" if len(result.folds) == n else f"all {n} folds (trained by this job and others): "
    return [f"  {scope}mean RMSE {cv['rmse_mean']:.4f} ± {cv.get('rmse_std', nan):.4f} (best checkpoint per fold)",
            f"  last weights {cv.get('rmse_last_mean', nan):.4f} ± {cv.get('rmse_last_std', nan):.4f};  "
            f"OOF {cv.get('rmse_oof', nan):.4f}"]


def conclude(cfg: DictConfig, result: CvResult) -> None:
    """Print the summary; a model the registry refused ends the command in one line (exit 1),
    after the summary of the run it keeps."""
    print_summary(cfg, result)
    if result.registry_error:
        raise RegistryError(result.registry_error)
