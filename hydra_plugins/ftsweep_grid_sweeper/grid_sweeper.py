"""ftsweep's sweeper for -m grids, registered as `hydra/sweeper=basic` (Hydra's default, so
every grid gets it): Hydra's basic sweeper, the same keys (`params`, `max_batch_size`), except
that a job process that died under the launcher (joblib, submitit: kill -9, the out-of-memory
killer) ends the sweep with one line and exit 1 instead of Hydra's traceback. Finished jobs keep
their runs and folds; rerunning the command resumes the rest."""

import os
import sys
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        from ftsweep.sweep.callback import EXPERIMENT_ENV
        from ftsweep.sweep.launchers import what_to_do, worker_died

        try:
            return super().sweep(arguments)
        except Exception as exc:
            death = worker_died(exc)
            if death is None:
                raise
            launcher = str(self.config.hydra.runtime.choices.get("hydra/launcher") or "its")
            name = os.environ.get(EXPERIMENT_ENV, "sweep")
            # No results table here: under SLURM the sweep's other jobs may still be running.
            print(f"ftsweep: error: a job's process {death.how} under the {launcher} launcher, and the sweep "
                  f"stopped there; finished jobs keep their runs in MLflow experiment {name!r}. Rerun the same "
                  f"command to run the rest (finished folds are reused); {what_to_do(launcher, death)}.",
                  file=sys.stderr)
            sys.exit(1)


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.ftsweep_grid_sweeper.grid_sweeper.GridSweeper"


# Imported by Hydra's plugin scan after its core plugins (this module imports basic_sweeper
# above, which registers Hydra's node first): this entry replaces it.
ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=GridSweeperConf, provider="ftsweep")
