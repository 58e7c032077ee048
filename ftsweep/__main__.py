"""`python -m ftsweep [overrides]`: k-fold CV of one composed config, logged to MLflow."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ftsweep.cli import guarded, in_multirun, task_overrides
from ftsweep.cv import run_cv
from ftsweep.progress import want_bar
from ftsweep.summary import print_summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    def job() -> float:
        result = run_cv(cfg, task_overrides(), use_bar=want_bar(in_multirun()))
        print_summary(cfg, result)
        return result.mean("rmse_best")

    return guarded(job, float("nan"))


if __name__ == "__main__":
    main()
