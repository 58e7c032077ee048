"""A search's settings (hydra.sweeper's keys, hydra-optuna-sweeper's names), each checked before
the first trial: the scalars, the sampler, the pruner (built once here, so a typo fails at once,
and settings that build but cannot work are named), and a custom search space's function."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ftsweep.config.rules import SEED_MAX, Range, show, whole
from ftsweep.cv.job import OBJECTIVES
from ftsweep.errors import FtsweepError
from ftsweep.search.paired import SettingError, build_pruner
from ftsweep.search.study import default_storage
from ftsweep.tracking.addresses import normalize_uri


@dataclass
class Settings:
    """hydra.sweeper's keys (hydra-optuna-sweeper's names), checked."""

    direction: str
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    study_name: str
    storage: str
    sampler: DictConfig | optuna.samplers.BaseSampler | None
    custom_search_space: str | None
    top: int
    objective: str = "rmse_best"
    timeout: float | None = None  # seconds of wall clock from the first trial's launch; none after it

    @classmethod
    def read(cls, sweeper: DictConfig, job_cfg: DictConfig, default_study: str) -> Settings:
        get = sweeper.get
        direction = get("direction") or "minimize"
        if not isinstance(direction, str):
            directions = list(direction)
            if len(directions) != 1:
                raise FtsweepError(f"hydra.sweeper.direction={directions}: ftsweep optimises one value, the CV RMSE.")
            direction = directions[0]
        direction = str(direction).lower()
        if direction != "minimize":
            raise FtsweepError(f"hydra.sweeper.direction={direction}: the objective is the CV RMSE, lower is "
                               f"better; use direction=minimize.")
        n_trials, n_jobs = _positive_int("n_trials", get("n_trials")), _positive_int("n_jobs", get("n_jobs", 1))
        rate = get("max_failure_rate", 0.0)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= float(rate) <= 1.0:
            raise FtsweepError(f"hydra.sweeper.max_failure_rate={rate!r} must be a number from 0 to 1.")
        tracking = normalize_uri(str(job_cfg.tracking.uri))
        storage = get("storage") or default_storage(tracking, str(job_cfg.paths.output_root))
        if not isinstance(storage, str):
            raise FtsweepError(f"hydra.sweeper.storage={storage!r} must be a database URL: sqlite:///path/optuna.db "
                               f"or postgresql+psycopg2://user@host/db.")
        if storage.split("?")[0].rstrip("/") in ("sqlite:", "sqlite://") or ":memory:" in storage:
            raise FtsweepError(f"hydra.sweeper.storage={storage}: an in-memory database is not seen by the trials' "
                               f"jobs; give a file, sqlite:///path/optuna.db.")
        name = get("study_name")
        if name is not None and (not isinstance(name, (str, int)) or isinstance(name, bool)
                                 or not str(name).strip() or len(str(name)) > 500):
            raise FtsweepError(f"hydra.sweeper.study_name={name!r} must be a name of 1 to 500 characters (or "
                               f"null: the sweep's experiment name).")
        top = _positive_int("top", get("top", 10))
        objective = get("objective") or "rmse_best"
        if objective not in OBJECTIVES:
            raise FtsweepError(f"hydra.sweeper.objective={show(objective)} is not one of {', '.join(OBJECTIVES)}.")
        timeout = get("timeout")
        if timeout is not None and not Range(low=0, low_open=True).admits(timeout):
            raise FtsweepError(f"hydra.sweeper.timeout={show(timeout)} must be a number of seconds > 0 (or null: no "
                               f"budget).")
        return cls(direction, n_trials, n_jobs, float(rate), str(name or default_study), storage,
                   get("sampler"), get("custom_search_space"), top, str(objective),
                   float(timeout) if timeout is not None else None)


def _positive_int(key: str, value) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # 1e3 is Hydra's float
    if isinstance(value, bool) or not whole or value < 1:
        raise FtsweepError(f"hydra.sweeper.{key}={value!r} must be a whole number >= 1.")
    return int(value)


def searched(sweeper: DictConfig) -> dict:
    """hydra.sweeper.params (and search_space, its old name)."""
    return dict(sweeper.get("search_space") or {}, **(sweeper.get("params") or {}))


def make_sampler(spec, existing_trials: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler restarted on a study with trials would propose its first trials again:
    its seed moves on by the trials already there (reruns stay reproducible)."""
    if spec is None:
        return optuna.samplers.TPESampler()
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    spec = OmegaConf.create(OmegaConf.to_container(spec, resolve=True)) if not isinstance(spec, DictConfig) else spec
    seed = spec.get("seed")
    _check_number("sampler.seed", seed, Range(integer=True, low=0, high=SEED_MAX, nullable=True))
    if existing_trials and seed is not None:
        spec = OmegaConf.merge(spec, {"seed": (seed + existing_trials) % (SEED_MAX + 1)})
    try:
        with warnings.catch_warnings():  # Optuna's "experimental" warning (QMC, GP) is noise here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = instantiate(spec)
    except Exception as exc:  # noqa: BLE001 (a bad _target_ or argument: one line)
        raise FtsweepError(f"hydra.sweeper.sampler: {_one_line(exc)}") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise FtsweepError(f"hydra.sweeper.sampler._target_ must be an Optuna sampler, not {type(sampler).__name__}.")
    return sampler


_WARM_UP = ("n_warmup_steps", "n_startup_steps")  # steps are folds: a pruner waits this many
_PRUNER_CHOICES = "paired, median, wilcoxon, hyperband, threshold or none"


def check_pruner(spec, n_folds: int | None = None) -> None:
    """The pruner each job builds (ftsweep.pruning), built once here so a typo fails before any
    trial; and settings that build but cannot work (a warm-up past the last fold never prunes)."""
    if spec is None:
        return
    if not isinstance(spec, (DictConfig, dict)):
        raise FtsweepError(f"hydra.sweeper.pruner={spec!r} is not a pruner's settings: choose one with "
                           f"hydra/sweeper/pruner=NAME ({_PRUNER_CHOICES}), then set its keys as "
                           f"hydra.sweeper.pruner.KEY=VALUE.")
    try:
        pruner = build_pruner(spec)
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else None  # Hydra wraps the reason
        if isinstance(cause, SettingError):
            raise FtsweepError(f"hydra.sweeper.pruner.{cause}.") from None  # its messages start with the key
        raise FtsweepError(f"hydra.sweeper.pruner: {_one_line(cause or exc)}") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise FtsweepError(f"hydra.sweeper.pruner._target_ must be an Optuna pruner, not {type(pruner).__name__}.")
    get = spec.get
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        for key, low in (("min_resource", 1), ("reduction_factor", 2)):
            if key in spec and get(key) != "auto":
                _check_number(f"pruner.{key}", get(key), Range(integer=True, low=low))
    if isinstance(pruner, optuna.pruners.ThresholdPruner):
        for key in ("lower", "upper"):
            _check_number(f"pruner.{key}", get(key), Range(nullable=True), "a number (or null: no bound)")
    for key in _WARM_UP:
        value = whole(get(key))  # 5.0 warms up as long as 5
        # a trial stops after folds 0..k-2 only: after its last fold there is nothing left to save
        if n_folds is not None and isinstance(value, int) and not isinstance(value, bool) and value >= n_folds - 1:
            use = f"use 0..{n_folds - 2}, or" if n_folds > 1 else "use"
            raise FtsweepError(f"hydra.sweeper.pruner.{key}={value} but a trial runs {n_folds} folds and can only be "
                               f"stopped before its last: this pruner could never stop a trial; {use} "
                               f"hydra/sweeper/pruner=none.")


def _check_number(key: str, value, rule: Range, want: str | None = None) -> None:
    if not (value is None and rule.nullable) and not rule.admits(value):
        raise FtsweepError(f"hydra.sweeper.{key}={show(value)} must be {want or rule.describe()}.")


def pruner_rule(spec, choice: str | None) -> str:
    """The pruning rule as the command chose it, e.g. `paired(alpha=0.05, min_delta=0.01, ...)`."""
    if spec is None:
        return "none"
    node = dict(OmegaConf.to_container(spec, resolve=True)) if isinstance(spec, DictConfig) else dict(spec)
    name = choice or str(node.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}({', '.join(f'{key}={value}' for key, value in sorted(node.items()) if key != '_target_')})"


def _one_line(exc: Exception) -> str:
    """Hydra's instantiate error in one line: "Error in call to target 'x':" is followed by the reason."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]


def extension(path: str) -> Callable:
    """hydra.sweeper.custom_search_space's function (Hydra's get_method would log three lines of its
    own, and its message drops the reason)."""
    module, _, name = str(path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except Exception as exc:  # noqa: BLE001 (ImportError, AttributeError, the module's own errors: one line)
        reason = str(exc).strip().splitlines()
        found, why = None, f"{type(exc).__name__}: {reason[0][:200]}" if reason else type(exc).__name__
    else:
        why = "not a function" if module else "not a dotted path"
    if not callable(found):
        raise FtsweepError(f"hydra.sweeper.custom_search_space={path!r}: {why}; give module.function(cfg, trial), "
                           f"importable from where you run the command.")
    return found
