"""`python -m ftsweep [overrides]`: k-fold CV of one composed config, logged to MLflow."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ftsweep.jobs import check_command_line, guarded, interrupts_handled


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@guarded(failed_value=float("nan"))
def main(cfg: DictConfig):
    # torch, transformers and MLflow (~6 s) only once the command line has passed its checks
    from ftsweep.cv.job import run_job
    from ftsweep.search.pruning import trial_hooks

    return run_job(cfg, trial_hooks(cfg))


if __name__ == "__main__":
    with interrupts_handled():
        check_command_line(sys.argv[1:])
        main()
