"""Multirun plumbing: the sweep's MLflow experiment, row labels, and the closing table.

`SweepCallback` (registered in conf/config.yaml) runs in the launching process:
before the jobs it names the sweep's experiment and creates the store and the
experiment once, so parallel jobs never race on SQLite's schema; after them it
builds the results table and prints it. Jobs learn the experiment name and the
swept keys through environment variables, which every launcher passes on
(basic: same process, joblib: spawned workers, submitit: job environment).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ftsweep.hydra_job import JOB_STATUS, SWEEP_ID_ENV
from ftsweep.tracking.naming import EXPERIMENT_ENV, SWEPT_ENV, sweep_experiment_name, swept_keys

log = logging.getLogger("ftsweep")
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


def job_outcomes(sweep_dir: Path, sweep_id: str, started: float) -> dict[str, list[str]]:
    """Each job folder of this sweep by outcome; a job that left no status died hard (kill -9)."""
    outcomes: dict[str, list[str]] = {"ok": [], "held": [], "failed": []}
    for job_dir in sorted(p for p in sweep_dir.glob("*") if (p / ".hydra").is_dir()):
        status_file = job_dir / JOB_STATUS
        try:
            record = json.loads(status_file.read_text()) if status_file.exists() else {}
        except (OSError, ValueError):  # a job killed while writing it: counted as died below
            record = {}
        if record.get("sweep") == sweep_id:
            outcomes.setdefault(record["status"], []).append(f"{job_dir.name}: {record.get('detail', '')}".rstrip(": "))
        elif _written_at(job_dir / ".hydra") >= started:
            outcomes["failed"].append(f"{job_dir.name}: the job ended without a result (its process died)")
    return outcomes


def _written_at(hydra_dir: Path) -> float:
    """When the job last wrote its .hydra files: a reused sweep folder gets them rewritten in
    place, which leaves the folder's own mtime at the earlier sweep's."""
    return max((p.stat().st_mtime for p in (hydra_dir, *hydra_dir.iterdir())), default=0.0)


def _sweeper_prints_own_summary(config: DictConfig) -> bool:
    """The sweeper class says so (ftsweep's Optuna sweeper: prints_own_summary = True)."""
    from hydra.utils import get_class

    target = config.hydra.sweeper.get("_target_")
    try:
        return bool(getattr(get_class(target), "prints_own_summary", False)) if target else False
    except Exception:  # noqa: BLE001 (an unimportable sweeper never got this far)
        return False


def _check_job_dir(key: str, folder: Path) -> None:
    """hydra.run.dir / hydra.sweep.dir: Hydra would fail there in a traceback."""
    from ftsweep.errors import ConfigError
    from ftsweep.files import folder_problem

    problem = folder_problem(folder)
    if problem is not None:
        raise ConfigError(f"{key}={folder}: {problem}; point {key} (or paths.output_root) at a writable folder.")


class SweepCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from ftsweep.errors import FtsweepError, exit_with

        try:
            _check_job_dir("hydra.run.dir", Path(str(config.hydra.run.dir)))
        except FtsweepError as exc:
            exit_with(exc)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from ftsweep.errors import FtsweepError, exit_with
        from ftsweep.tracking.store import Tracker

        overrides = list(config.hydra.overrides.task)
        keys = swept_keys(overrides) + list(config.hydra.sweeper.get("params") or {})
        name = config.tracking.get("experiment") or sweep_experiment_name(overrides, keys)
        os.environ[EXPERIMENT_ENV] = name
        os.environ[SWEPT_ENV] = json.dumps(keys)
        os.environ[SWEEP_ID_ENV] = uuid.uuid4().hex
        # joblib's resource tracker (a process of its own, started with this environment) outlives a
        # driver that leaves at once on Ctrl-C (a search) and warns of each semaphore and /dev/shm
        # folder it then removes: noise under the sweep's one line.
        filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
        os.environ["PYTHONWARNINGS"] = ",".join([*filters, *([] if _QUIET_TRACKER in filters else [_QUIET_TRACKER])])
        self.started = time.time() - 1.0
        try:
            _check_job_dir("hydra.sweep.dir", Path(str(config.hydra.sweep.dir)))
            Tracker(config.tracking.uri, name)  # store, schema and experiment exist before any job starts
        except FtsweepError as exc:  # Hydra would only warn and start every job against a broken store
            exit_with(exc)
        log.info("sweep: MLflow experiment %r at %s", name, config.tracking.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        name = os.environ.get(EXPERIMENT_ENV, "sweep")
        sweep_dir = Path(config.hydra.sweep.dir)
        if _sweeper_prints_own_summary(config):
            return  # a search: its summary, and its failed trials by name (a job that died ran again)
        self._print_table(config, name, sweep_dir)
        self._report_jobs(sweep_dir)

    @staticmethod
    def _print_table(config: DictConfig, name: str, sweep_dir: Path) -> None:
        from ftsweep.errors import FtsweepError
        from ftsweep.sweep.compare import DEFAULT_ROPE
        from ftsweep.sweep.table import write_table
        from ftsweep.tracking.store import Tracker

        try:
            tracker = Tracker(config.tracking.uri, name, create=False)
            rope = OmegaConf.select(config, "table.rope", default=DEFAULT_ROPE)
            markdown, paths = write_table(tracker, sweep_dir / "table", rope=rope)
            print(f"\nResults of sweep {name!r}\n\n{markdown}\n\n{paths['md']}\n"
                  f"Again later: python -m ftsweep.table --experiment {shlex.quote(name)} "
                  f"--tracking-uri {shlex.quote(tracker.uri)}\n"
                  f"The runs in the MLflow UI (make ui): {tracker.runs_link()}")
        except FtsweepError as exc:
            print(f"ftsweep: no results table: {exc}")

    def _report_jobs(self, sweep_dir: Path) -> None:
        from ftsweep.errors import exit_with

        outcomes = job_outcomes(sweep_dir, os.environ.get(SWEEP_ID_ENV, ""), getattr(self, "started", 0.0))
        n_jobs = sum(len(v) for v in outcomes.values())
        if outcomes["held"]:
            print(f"ftsweep: {len(outcomes['held'])} of {n_jobs} job(s) skipped: another live process is running "
                  f"their config; rerun this command when it has finished to complete the table.")
        if outcomes["failed"]:
            lines = "\n".join(f"  job {line}" for line in outcomes["failed"])
            exit_with(f"{len(outcomes['failed'])} of {n_jobs} sweep job(s) failed; the table holds only what "
                      f"finished. Fix what they say and rerun the same command: finished units are kept, only "
                      f"these run again:\n{lines}", 1)
