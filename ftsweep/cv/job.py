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


@dataclass(frozen=True)
class TrialReport:
    """What a search trial's job hands back to the sweeper, through whatever launcher ran it
    (ftsweep.search.loop tells the study from it)."""

    value: float  # the objective: mean CV RMSE of the best checkpoints (NaN when pruned or held)
    pruned_at: int | None  # the fold after which the pruner stopped the trial
    held: bool  # another live process runs this config: no result from this job
    run_id: str | None  # the MLflow parent run, linked from the trial


def run_job(cfg: DictConfig, trial: TrialHooks | None = None) -> float | TrialReport:
    multirun = in_multirun()
    with open_dict(cfg):
        cfg.tracking.experiment = experiment_name(cfg, multirun)
    resume = multirun if cfg.tracking.resume == "auto" else bool(cfg.tracking.resume)
    hooks = trial or TrialHooks()
    job = Job(task_overrides(), resume, {JOB_NUM_TAG: str(job_number()), **hooks.tags}, use_bar=want_bar(multirun),
              after_fold=hooks.after_fold)
    result = run_cv(cfg, job)
    conclude(cfg, result)
    if multirun:
        record_job("held" if result.held_by else "ok", result.held_by or "")
    if trial is not None:
        return TrialReport(result.mean("rmse_best"), result.pruned_at, bool(result.held_by), result.parent_run_id)
    return result.mean("rmse_best")
