"""One Hydra job of `python -m ftsweep`: its experiment, whether it resumes, its tags, the CV run,
its closing lines, its outcome for the sweep's report, and what it returns: the mean CV RMSE a
sweeper optimises, or, in a search trial, a TrialReport for the study."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, open_dict

from ftsweep.cv.pipeline import FoldReport, Job, run_cv
from ftsweep.cv.summary import conclude
from ftsweep.hydra_job import in_multirun, job_number, record_job, task_overrides
from ftsweep.tags import JOB_NUM_TAG
from ftsweep.tracking.naming import experiment_name
from ftsweep.train.progress import want_bar


@dataclass(frozen=True)
class TrialHooks:
    """What a search adds to its trial's job: tags naming the study and trial, and the pruner's
    question after each fold (ftsweep.search.pruning builds them)."""

    tags: dict[str, str] = field(default_factory=dict)
    after_fold: FoldReport | None = None


# What a search may minimise (hydra.sweeper.objective) -> the fold predictions it scores. rmse_best is
# the write-up's protocol: each fold's best evaluation on its own validation rows, which the selection
# makes optimistic; rmse_last scores the final (or SWA) weights; oof pools every fold's best-checkpoint
# predictions into one RMSE.
OBJECTIVES = {"rmse_best": "pred_best", "rmse_last": "pred_last", "oof": "pred_best"}


@dataclass(frozen=True)
class TrialReport:
    """What a search trial's job hands back to the sweeper, through whatever launcher ran it
    (ftsweep.search.loop tells the study from it)."""

    scores: dict[str, float]  # each objective a search may minimise (OBJECTIVES; NaN when pruned or held)
    pruned_at: int | None  # the fold after which the pruner stopped the trial
    held: bool  # another live process runs this config: no result from this job
    run_id: str | None  # the MLflow parent run, linked from the trial


def run_job(cfg: DictConfig, trial: TrialHooks | None = None) -> float | TrialReport:
    multirun = in_multirun()
    with open_dict(cfg):
        cfg.tracking.experiment = experiment_name(cfg, multirun)
    # auto: sweeps and jobs of a fold subset (cv.folds) reuse finished folds; a single run joins a
    # config whose folds ran as jobs of their own, and otherwise starts fresh
    auto = cfg.tracking.resume == "auto"
    resume = (multirun or cfg.cv.get("folds") is not None) if auto else bool(cfg.tracking.resume)
    hooks = trial or TrialHooks()
    job = Job(task_overrides(), resume, auto, {JOB_NUM_TAG: str(job_number()), **hooks.tags},
              use_bar=want_bar(multirun), after_fold=hooks.after_fold)
    result = run_cv(cfg, job)
    conclude(cfg, result)
    if multirun:
        record_job("held" if result.held_by else "ok", result.held_by or "")  # folds left to a live job: ok
    if trial is not None:
        scores = {"rmse_best": result.mean("rmse_best"), "rmse_last": result.mean("rmse_last"), "oof": result.rmse_oof}
        return TrialReport(scores, result.pruned_at, bool(result.held_by), result.parent_run_id)
    return result.mean("rmse_best")
