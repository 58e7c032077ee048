"""`hydra/sweeper=optuna`: Hydra's side of a search. The work is in ftsweep.search."""

from __future__ import annotations

import os
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    # Read by ftsweep's SweepCallback: a search writes its own summary (best.yaml, top trials) and
    # names its failed trials, so the grid's closing results table and job report are not printed
    # (a job folder left by a trial that died and ran again is no failure).
    prints_own_summary = True

    def __init__(self, **settings: Any) -> None:
        # The settings are read from the composed config in sweep(), where errors are one line.
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        from ftsweep.jobs import exit_interrupted
        from ftsweep.search.sweeper import Launcher, search
        from ftsweep.tracking.naming import EXPERIMENT_ENV

        assert self.config is not None
        launcher = Launcher(lambda jobs, first: self.launcher.launch(jobs, initial_job_idx=first),
                            concurrent=concurrent_launches(self.launcher))
        try:
            return search(self.config.hydra.sweeper, list(arguments), self.config, self.hydra_context.config_loader,
                          launcher, default_study=os.environ.get(EXPERIMENT_ENV, "search"))
        except KeyboardInterrupt:  # between trials or in the summary (a trial's job says it itself)
            exit_interrupted("Rerun the same command to go on with the study (an interrupted trial runs again "
                             "and keeps its finished folds).")


def concurrent_launches(launcher: Any) -> bool:
    """Launchers whose launch() may be called from several threads at once, each call running its
    jobs in other processes: joblib (loky workers; n_jobs=1 would run the job in the calling
    thread) and submitit (local processes or SLURM jobs, a new executor per call). Any other
    launcher gets its trials in batches, as launch() was written for."""
    names = {cls.__name__ for cls in type(launcher).__mro__}
    if "JoblibLauncher" in names:
        return getattr(launcher, "joblib", {}).get("n_jobs", -1) != 1
    return "BaseSubmititLauncher" in names
