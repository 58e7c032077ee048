"""ftsweep's sweeper for -m grids, registered as `hydra/sweeper=basic` (Hydra's default, so
every grid gets it): Hydra's basic sweeper, the same keys (`params`, `max_batch_size`), except
that a job process that died under the launcher (joblib, submitit: kill -9, the out-of-memory
killer) ends the sweep with one line and exit 1, and Ctrl-C with one line and exit 130, instead
of a traceback. Either way joblib kills its other workers with SIGKILL, so the runs they had open
are marked KILLED here (only runs whose process is gone). Finished jobs keep their runs and
folds; rerunning the command resumes the rest."""

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        from ftsweep.errors import exit_with
        from ftsweep.sweep.launchers import what_to_do, worker_died
        from ftsweep.tracking.naming import EXPERIMENT_ENV

        name = os.environ.get(EXPERIMENT_ENV, "sweep")
        launcher = str(self.config.hydra.runtime.choices.get("hydra/launcher") or "its")
        try:
            return super().sweep(arguments)
        except KeyboardInterrupt:
            self._interrupted(name, launcher)
        except Exception as exc:
            death = worker_died(exc)
            if death is None:
                raise
            if death.interrupted:  # Ctrl-C ended an idle worker before this process saw its own SIGINT
                self._interrupted(name, launcher)
            # joblib kills its other workers (wait for them to be gone); submitit's other jobs run on
            self._close_dead_runs(name, wait=launcher == "joblib", stop_jobs=False)
            # No results table here: under SLURM the sweep's other jobs may still be running.
            exit_with(f"a job's process {death.how} under the {launcher} launcher, and the sweep "
                  f"stopped there; finished jobs keep their runs in MLflow experiment {name!r}. Rerun the same "
                  f"command to run the rest (finished folds are reused); {what_to_do(launcher, death)}.", 1)

    def _interrupted(self, experiment: str, launcher: str) -> NoReturn:
        self._close_dead_runs(experiment, wait=True, stop_jobs=True)
        if launcher.startswith("submitit") and "local" not in launcher:  # Hydra's launcher cancels nothing
            print(f"ftsweep: interrupted; the sweep's SLURM jobs go on running and logging to MLflow experiment "
                  f"{experiment!r} (scancel stops them; their ids are in the job folders under hydra.sweep.dir). "
                  f"Rerun the same command for the rest and the table (finished folds are reused).", file=sys.stderr)
        else:
            print(f"ftsweep: interrupted; finished jobs keep their runs in MLflow experiment {experiment!r}. Rerun "
                  f"the same command to run the rest (finished folds are reused).", file=sys.stderr)
        sys.exit(130)

    def _close_dead_runs(self, experiment: str, wait: bool, stop_jobs: bool) -> None:
        """Runs of this sweep's experiment left RUNNING by job processes that are gone -> KILLED, as
        the next run against the store would do (under the store's lock, as a claim does: another
        sweep may be reopening one of them); a failure here must not hide the sweep's message.
        With `wait`, this sweep's own job processes that still hold runs are waited for first, up to
        ORPHAN_GRACE (they close their runs on a signal, or joblib kills them part-way from a
        thread of its own, which this process may not have waited for); with `stop_jobs`, then killed.
        Ctrl-C and SIGTERM are ignored from here on: the process only leaves after this."""
        from ftsweep.jobs import ORPHAN_GRACE
        from ftsweep.locks import end_own_owners, store_lock
        from ftsweep.tracking.store import Tracker
        from ftsweep.tracking.units import close_orphans

        for signum in (signal.SIGINT, signal.SIGTERM):  # one more would cut the wait and the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        try:
            tracker = Tracker(str(self.config.tracking.uri), experiment, create=False)
            if wait:
                end_own_owners([run.data.tags for run in tracker.running_runs()], ORPHAN_GRACE, kill=stop_jobs)
            with store_lock(tracker.uri):
                close_orphans(tracker, why="the sweep stopped")
        except Exception as exc:  # noqa: BLE001 (a store that went away: the next run closes them)
            print(f"ftsweep: could not mark the interrupted runs KILLED ({str(exc).splitlines()[0][:200]}); "
                  f"the next run against this store does.", file=sys.stderr)


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.ftsweep_grid_sweeper.grid_sweeper.GridSweeper"


# Imported by Hydra's plugin scan after its core plugins (this module imports basic_sweeper
# above, which registers Hydra's node first): this entry replaces it.
ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=GridSweeperConf, provider="ftsweep")
