"""`python -m ftsweep [overrides]`: k-fold CV of one composed config, logged to MLflow."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, open_dict

from ftsweep.hydra_job import in_multirun, job_number, task_overrides
from ftsweep.jobs import check_command_line, guarded
from ftsweep.tags import JOB_NUM_TAG


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | dict:
    def job() -> float | dict:
        # torch, transformers and MLflow (~6 s) only once the command line has passed its checks:
        # a mistyped key is answered at once
        from ftsweep.cv.pipeline import Job, run_cv
        from ftsweep.cv.summary import conclude
        from ftsweep.hydra_job import record_job
        from ftsweep.search.pruning import fold_reporter, trial_tags
        from ftsweep.tracking.naming import experiment_name
        from ftsweep.train.progress import want_bar

        multirun = in_multirun()
        with open_dict(cfg):
            cfg.tracking.experiment = experiment_name(cfg, multirun)
        resume = multirun if cfg.tracking.resume == "auto" else bool(cfg.tracking.resume)
        result = run_cv(cfg, Job(task_overrides(), resume, {JOB_NUM_TAG: str(job_number()), **trial_tags(cfg)},
                                 use_bar=want_bar(multirun), after_fold=fold_reporter(cfg)))
        conclude(cfg, result)
        if multirun:
            record_job("held" if result.held_by else "ok", result.held_by or "")
        if cfg.search.get("trial_id") is not None:  # what the search sweeper tells its study
            return {"value": result.mean("rmse_best"), "pruned_at": result.pruned_at, "held": bool(result.held_by),
                    "run_id": result.parent_run_id}
        return result.mean("rmse_best")

    return guarded(job, float("nan"))


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
