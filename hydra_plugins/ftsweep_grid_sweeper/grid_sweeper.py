"""ftsweep's sweeper for -m grids, registered as `hydra/sweeper=basic` (Hydra's default, so
every grid gets it): Hydra's basic sweeper, the same keys (`params`, `max_batch_size`), except
that a job process killed under the launcher (joblib, submitit: kill -9, the out-of-memory
killer) ends the sweep with one line and exit 1 instead of Hydra's traceback. Finished jobs keep
their runs and folds; rerunning the command resumes the rest."""

import sys
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        from ftsweep.sweep.launchers import launcher_name, worker_died

        try:
            return super().sweep(arguments)
        except Exception as exc:
            died = worker_died(exc)
            if died is None:
                raise
            launcher = launcher_name(str(self.config.hydra.launcher.get("_target_", "")))
            print(f"ftsweep: error: a job's process {died} under the {launcher} launcher, which stops the sweep; "
                  f"finished jobs keep their runs in MLflow. Rerun the same command to run the rest (finished "
                  f"folds are reused); if memory ran out, lower hydra.launcher.n_jobs or trainer.batch_size.",
                  file=sys.stderr)
            sys.exit(1)


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.ftsweep_grid_sweeper.grid_sweeper.GridSweeper"


# Imported by Hydra's plugin scan after its core plugins (this module imports basic_sweeper
# above, which registers Hydra's node first): this entry replaces it.
ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=GridSweeperConf, provider="ftsweep")
