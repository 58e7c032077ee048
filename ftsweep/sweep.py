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
import re
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("ftsweep")
EXPERIMENT_ENV = "FTSWEEP_SWEEP_EXPERIMENT"
SWEPT_ENV = "FTSWEEP_SWEEP_KEYS"
_SWEEP_VALUE = re.compile(r",|^(range|choice|glob|interval)\(")
_NESTED = re.compile(r"\[[^\]]*\]|\{[^}]*\}|'[^']*'|\"[^\"]*\"")  # a list or quoted string is one value
_NOT_NAMING = ("hydra", "tracking.", "paths.")
DEFAULT_EXPERIMENT = "ftsweep"  # single runs, when tracking.experiment is null


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(overrides: list[str]) -> list[str]:
    return [_split(o)[0] for o in overrides if _SWEEP_VALUE.search(_NESTED.sub("", _split(o)[1]))]


def sweep_experiment_name(overrides: list[str]) -> str:
    """Deterministic from the command, so rerunning it resumes into the same experiment."""
    kept = sorted(o.lstrip("+") for o in overrides if not _split(o)[0].startswith(_NOT_NAMING))
    return "sweep " + " ".join(kept) if kept else "sweep"


def experiment_name(cfg: DictConfig, multirun: bool) -> str:
    if cfg.tracking.get("experiment"):
        return str(cfg.tracking.experiment)
    if multirun:
        return os.environ.get(EXPERIMENT_ENV, "sweep")
    return DEFAULT_EXPERIMENT


def row_label(cfg: DictConfig, job_overrides: list[str]) -> str:
    """A preset's label, else the swept overrides of this job, else all of its overrides."""
    if cfg.get("label"):
        return str(cfg.label)
    keys = set(json.loads(os.environ.get(SWEPT_ENV, "[]"))) - {"trainer.seed"}  # seeds pool into one row
    swept = [o for o in job_overrides if _split(o)[0] in keys]
    chosen = swept or [o for o in job_overrides if _split(o)[0] != "trainer.seed"]
    return " ".join(chosen) if chosen else "default"


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from ftsweep.tracking import Tracker

        overrides = list(config.hydra.overrides.task)
        name = config.tracking.get("experiment") or sweep_experiment_name(overrides)
        keys = swept_keys(overrides) + list(config.hydra.sweeper.get("params") or {})
        os.environ[EXPERIMENT_ENV] = name
        os.environ[SWEPT_ENV] = json.dumps(keys)
        Tracker(config.tracking.uri, name)  # store, schema and experiment exist before any job starts
        log.info("sweep: MLflow experiment %r at %s", name, config.tracking.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from ftsweep.errors import FtsweepError
        from ftsweep.table import write_table
        from ftsweep.tracking import Tracker

        name = os.environ.get(EXPERIMENT_ENV, "sweep")
        try:
            tracker = Tracker(config.tracking.uri, name, create=False)
            markdown, paths = write_table(tracker, Path(config.hydra.sweep.dir) / "table")
        except FtsweepError as exc:
            print(f"ftsweep: no results table: {exc}")
            return
        print(f"\nResults of sweep {name!r}\n\n{markdown}\n\n{paths['md']}\n"
              f"Again later: python -m ftsweep.table --experiment '{name}' --tracking-uri {config.tracking.uri}")
