"""Names a reader sees in MLflow: the experiment a run or sweep logs to, and the label of a run's
row in the results table. A sweep's callback names its experiment and its swept keys once, in the
launching process; every job reads them back from the environment, which every launcher passes on
(basic: same process, joblib: spawned workers, submitit: job environment)."""

from __future__ import annotations

import hashlib
import json
import os
import re

from omegaconf import DictConfig

from ftsweep.config.checks import EXPERIMENT_NAME_LIMIT

EXPERIMENT_ENV = "FTSWEEP_SWEEP_EXPERIMENT"
SWEPT_ENV = "FTSWEEP_SWEEP_KEYS"


_SWEEP_VALUE = re.compile(r",|^(range|choice|glob|interval|tag)\(")
_NESTED = re.compile(r"\[[^\]]*\]|\{[^}]*\}|'[^']*'|\"[^\"]*\"")  # a list or quoted string is one value
_LONG_FLOAT = re.compile(r"(?<![\w.])\d+\.\d{5,}(e[-+]?\d+)?|\d\.\d{5,}e[-+]?\d+")  # a sampled value, shortened in labels
_NOT_NAMING = ("hydra", "tracking.", "paths.", "table.", "cv.folds")  # how it runs or is shown: the same sweep
DEFAULT_EXPERIMENT = "ftsweep"
FOLDS_KEY = "cv.folds"  # which folds a job runs: never part of a config's name, label or key


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(overrides: list[str]) -> list[str]:
    return [_split(o)[0] for o in overrides if _SWEEP_VALUE.search(_NESTED.sub("", _split(o)[1]))]


def fold_jobs_only(swept: list[str]) -> bool:
    """A multirun that sweeps cv.folds alone runs one config, its folds as jobs of their own."""
    return FOLDS_KEY in swept and set(swept) == {FOLDS_KEY}


def sweep_experiment_name(overrides: list[str], swept: list[str] | None = None) -> str:
    """Deterministic from the command, so rerunning it resumes into the same experiment. cv.folds is
    left out: a sweep and its fold-parallel form are one experiment, and one config run as fold jobs
    (`swept` is cv.folds alone) logs where its single run does."""
    if fold_jobs_only(swept if swept is not None else swept_keys(overrides)):
        return DEFAULT_EXPERIMENT
    kept = sorted(o.lstrip("+") for o in overrides if not _split(o)[0].startswith(_NOT_NAMING))
    name = "sweep " + " ".join(kept) if kept else "sweep"
    if len(name) > EXPERIMENT_NAME_LIMIT:  # MLflow's limit: cut, and told apart from other long commands
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:EXPERIMENT_NAME_LIMIT - len(digest) - 3]}… {digest}"
    return name


def experiment_name(cfg: DictConfig, multirun: bool) -> str:
    if cfg.tracking.get("experiment"):
        return str(cfg.tracking.experiment)
    if multirun:
        return os.environ.get(EXPERIMENT_ENV, "sweep")
    return DEFAULT_EXPERIMENT


def row_label(cfg: DictConfig, job_overrides: list[str]) -> str:
    """A preset's label, else the swept overrides of this job, else all of its overrides;
    a search trial's label starts with its trial number (its lineage: retries keep it)."""
    lineage = (cfg.get("search") or {}).get("lineage")
    prefix = f"trial {lineage}: " if lineage is not None else ""
    if cfg.get("label"):
        return prefix + str(cfg.label)
    job_overrides = [o for o in job_overrides if not _split(o)[0].startswith("search.")]
    keys = set(json.loads(os.environ.get(SWEPT_ENV, "[]"))) - {"trainer.seed"}  # seeds pool into one row
    job_overrides = [o for o in job_overrides if _split(o)[0] != FOLDS_KEY]  # a fold job's row is its config's
    swept = [o for o in job_overrides if _split(o)[0] in keys]
    chosen = swept or [o for o in job_overrides if _split(o)[0] != "trainer.seed"]
    label = " ".join(chosen) if chosen else "default"
    return prefix + _LONG_FLOAT.sub(lambda m: f"{float(m.group()):.4g}", label) if prefix else label
