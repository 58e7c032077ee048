"""Inside a search trial's job: report the running mean validation RMSE after every fold (and,
for the paired pruner, the fold's per-row errors) and ask the sweeper's pruner whether the
trial should stop there.

The job may run in another process or on another node (joblib, SLURM), so it reaches the
trial through the study's storage; the pruner is the one the sweeper was configured with.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ftsweep import interrupts
from ftsweep.cv.job import OBJECTIVES, TrialHooks
from ftsweep.cv.pipeline import FoldReport
from ftsweep.data.loading import TARGET
from ftsweep.tags import STUDY_TAG, TRIAL_TAG
from ftsweep.train.loop import rmse

log = logging.getLogger("ftsweep")


def trial_hooks(cfg: DictConfig) -> TrialHooks | None:
    """None outside a search. A trial's runs name their study and trial (the search summary finds
    them by these), and its folds are reported to the study."""
    search = cfg.get("search")
    if search is None or search.get("trial_id") is None:
        return None
    tags = {STUDY_TAG: str(search.study), TRIAL_TAG: str(search.lineage)} if search.get("lineage") is not None else {}
    return TrialHooks(tags, fold_reporter(cfg))


def fold_reporter(cfg: DictConfig) -> FoldReport | None:
    """None outside a search (every fold runs). Reported after each fold: the running mean RMSE
    (Optuna's WilcoxonPruner pairs folds, so it gets the fold's own RMSE); for the paired pruner
    the fold's per-row errors are stored on the trial first."""
    search = cfg.get("search")
    if search is None or search.get("trial_id") is None:
        return None
    import optuna

    from ftsweep.search.paired import encode_errors
    from ftsweep.search.study import open_storage
    from ftsweep.tags import ROW_ERRORS_ATTR

    pruner, objective = _configured_pruner(), _configured_objective()
    study = optuna.load_study(study_name=str(search.study), storage=open_storage(str(search.storage)), pruner=pruner)
    trial = optuna.trial.Trial(study, int(search.trial_id))
    per_fold = isinstance(pruner, optuna.pruners.WilcoxonPruner)
    column, scored = OBJECTIVES[objective], []  # the objective's predictions, fold by fold

    def report(step: int, running_mean: float, predictions: pd.DataFrame) -> bool:
        scored.append(predictions)
        value = _reported(scored, column, running_mean, per_fold=per_fold, objective=objective)
        with interrupts.held():  # the study's SQLite file is not left locked by a signal (ftsweep.interrupts)
            if getattr(pruner, "needs_row_errors", False):
                trial.set_user_attr(ROW_ERRORS_ATTR.format(step=step), encode_errors(predictions, column))
            trial.report(value, step)
            return trial.should_prune()

    return report


def _reported(scored: list[pd.DataFrame], column: str, running_mean: float, *, per_fold: bool,
              objective: str) -> float:
    """What the trial reports after its latest fold: that fold's own RMSE (Wilcoxon pairs folds), or
    the objective so far: the running mean of rmse_best, the mean of the folds' last-weights RMSE,
    or the RMSE of every row scored so far (oof)."""
    def score(frame: pd.DataFrame) -> float:
        return rmse(frame[column].to_numpy(), frame[TARGET].to_numpy())

    if per_fold:
        return score(scored[-1])
    if objective == "rmse_best":
        return running_mean
    if objective == "oof":
        return score(pd.concat(scored))
    return float(np.mean([score(frame) for frame in scored]))


def _configured_objective() -> str:
    """hydra.sweeper.objective: what the trial is scored by, and so what its folds report."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "rmse_best"
    return str(HydraConfig.get().sweeper.get("objective") or "rmse_best")


def _configured_pruner():
    """The sweeper's `pruner` (hydra.sweeper.pruner), or none when the job runs without one."""
    import optuna
    from hydra.core.hydra_config import HydraConfig

    from ftsweep.search.paired import build_pruner

    if not HydraConfig.initialized():
        return optuna.pruners.NopPruner()
    node = HydraConfig.get().sweeper.get("pruner")
    return build_pruner(node) if node is not None else optuna.pruners.NopPruner()
