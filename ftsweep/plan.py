"""`python -m ftsweep.plan [overrides]`: the per-layer learning-rate schedule, without training.

Writes lr_schedule.csv (step,layer,lr), lr_schedule.png and a bar chart of every
layer's rate where the warm-up ends (lr_at_step_<k>.png); see ftsweep.cv.plan.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ftsweep.cv.plan import write_plan
from ftsweep.jobs import check_command_line, guarded


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@guarded(failed_value=None)
def main(cfg: DictConfig) -> None:
    csv_path, png_path, bars = write_plan(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(f"lr schedule: {csv_path}\nfigure:      {png_path}\nbars:        {bars}")


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
