"""`python -m ftsweep.predict run_id=<parent run> data.path=test.csv`: average the fold models.

A thin CLI over the run's MLflow model (the CV ensemble, runs:/<id>/model): predicts every
row of the CSV with every fold model and writes the mean as submission.csv (id,target),
CommonLit's submission format. The work is in ftsweep.ensemble.predict.
"""

from __future__ import annotations

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig

from ftsweep.ensemble.predict import check_args, predict_csv
from ftsweep.jobs import check_command_line, guarded

log = logging.getLogger("ftsweep")


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@guarded(failed_value=None)
def main(cfg: DictConfig) -> None:
    torch.set_grad_enabled(False)
    out = check_args(cfg)
    submission, n_models = predict_csv(cfg)
    submission.to_csv(out, index=False)
    print(f"wrote {out.resolve()}: {len(submission)} rows, mean of {n_models} fold models")


if __name__ == "__main__":
    check_command_line(sys.argv[1:], "predict")
    main()
