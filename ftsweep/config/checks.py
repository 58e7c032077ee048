"""Config checks, run before any weights, data or MLflow store are touched.

Each problem raises ConfigError with one line naming the key the user typed and
what would be valid, so a typo in a sweep costs seconds, not a failed job an
hour in. Each key's own values are checked by the rules in rules.py, the config's shape
by keys.py; the rules between keys follow here.
"""

from __future__ import annotations

import logging
import posixpath

from omegaconf import DictConfig, ListConfig

from ftsweep.config.keys import check_structure
from ftsweep.config.options import OPTIMIZERS
from ftsweep.config.rules import (
    FRACTION,
    POSITIVE,
    POSITIVE_INT,
    check_range,
    check_values,
    show,
    shown,
    value_at,
)
from ftsweep.errors import ConfigError

log = logging.getLogger("ftsweep")


def validate(cfg: DictConfig, n_layers: int | None = None, max_tokens: int | None = None) -> None:
    """Raise ConfigError on the first impossible setting. `n_layers`, `max_tokens`: the model's, when known."""
    check_structure(cfg)
    check_settings(cfg, n_layers, max_tokens)


def check_settings(cfg: DictConfig, n_layers: int | None = None, max_tokens: int | None = None) -> None:
    """validate() on a config whose shape is already checked (check_structure): each value, then
    the rules between keys."""
    check_values(cfg)
    padded = -(-cfg.trainer.max_length // cfg.trainer.pad_to_multiple_of) * cfg.trainer.pad_to_multiple_of
    if max_tokens is not None and cfg.trainer.max_length <= max_tokens < padded:
        raise ConfigError(f"trainer.pad_to_multiple_of={cfg.trainer.pad_to_multiple_of} pads batches to {padded} tokens, "
                          f"beyond {cfg.model.name}'s limit of {max_tokens}; use a divisor of {max_tokens} such as 8 or 64.")
    if max_tokens is not None and cfg.trainer.max_length > max_tokens:
        raise ConfigError(
            f"trainer.max_length={cfg.trainer.max_length} exceeds {cfg.model.name}'s limit of {max_tokens} tokens; "
            f"use trainer.max_length<={max_tokens} (longer texts are truncated)."
        )
    check_cv(cfg)
    _check_optimizer(cfg, n_layers)
    _check_schedule(cfg)
    _check_reinit(cfg, n_layers)
    _check_model_overrides(cfg)
    _check_registry(cfg)
    check_experiment(cfg)
    for key in ("data.id_column", "data.text_column", "data.target_column"):
        if not isinstance(value_at(cfg, key), str) or not value_at(cfg, key).strip():
            raise ConfigError(f"{key}={value_at(cfg, key)!r} must name a CSV column.")


def check_cv(cfg: DictConfig) -> None:
    """cv.n_folds against the rows, and cv.folds: distinct fold numbers below cv.n_folds."""
    n = cfg.cv.n_folds
    folds = cfg.cv.get("folds")
    if folds is not None and not isinstance(folds, ListConfig):
        raise ConfigError(f"cv.folds={show(folds)} must be a list of fold numbers, e.g. cv.folds=[0] (or null for all).")
    if folds is not None:
        bad = [f for f in folds if not isinstance(f, int) or isinstance(f, bool) or not 0 <= f < n]
        if bad or len(folds) == 0 or len(set(folds)) != len(folds):
            raise ConfigError(f"cv.folds={list(folds)} must be a non-empty list of distinct fold numbers in 0..{n - 1}.")
    max_rows = cfg.data.get("max_rows")
    if max_rows is not None and max_rows < n:
        raise ConfigError(f"data.max_rows={max_rows} cannot be split into cv.n_folds={n} folds; use more rows or fewer folds.")


def _check_optimizer(cfg: DictConfig, n_layers: int | None) -> None:
    opt = cfg.optimizer
    betas = opt.get("betas")
    if betas is not None and (len(betas) != 2 or not all(FRACTION.admits(b) for b in betas)):
        raise ConfigError(f"{shown(cfg, 'optimizer.betas')} must be two numbers in [0, 1).")
    _OPTIMIZER_RULES[opt.name](opt, n_layers)


def _check_layer_decay(opt: DictConfig, n_layers: int | None) -> None:
    if opt.layer_decay > 1:
        log.warning("optimizer.layer_decay=%s > 1: lower layers get *higher* rates than the top one "
                    "(usual values are 0.8-0.95).", opt.layer_decay)


def _check_groups(opt: DictConfig, n_layers: int | None) -> None:
    if len(opt.group_lrs) != opt.n_groups:
        raise ConfigError(
            f"optimizer.group_lrs has {len(opt.group_lrs)} rates for optimizer.n_groups={opt.n_groups}; give one per group."
        )
    for i, lr in enumerate(opt.group_lrs):
        if not POSITIVE.admits(lr):
            raise ConfigError(f"optimizer.group_lrs[{i}]={lr!r} must be a positive number.")
    if n_layers is not None and opt.n_groups > n_layers:
        raise ConfigError(f"optimizer.n_groups={opt.n_groups} is more than the model's {n_layers} layers.")


# each optimizer's own rules (the keys only it reads)
_OPTIMIZER_RULES = OPTIMIZERS.implement({"adamw": lambda opt, n_layers: None, "llrd": _check_layer_decay,
                                         "grouped_llrd": _check_groups})


def _check_schedule(cfg: DictConfig) -> None:
    sched, swa, ev = cfg.scheduler, cfg.swa, cfg.eval
    if sched.get("warmup_steps") is not None and sched.get("warmup_ratio") is not None:
        raise ConfigError("scheduler.warmup_steps and scheduler.warmup_ratio are both set; keep one (set the other to null).")
    if ev.strategy == "frequent" and ev.get("every_n_batches") is None:
        raise ConfigError("eval=frequent needs eval.every_n_batches (a positive integer).")
    if ev.start_epoch >= cfg.trainer.epochs:
        raise ConfigError(f"eval.start_epoch={ev.start_epoch} must be in 0..{cfg.trainer.epochs - 1} (trainer.epochs={cfg.trainer.epochs}).")
    if swa.enabled:
        if (swa.get("lr") is None) == (swa.get("lr_scale") is None):
            raise ConfigError("swa=on needs exactly one of swa.lr (one rate for every group) or swa.lr_scale (each group's peak x factor).")
        if swa.get("start_epoch") is not None:
            if swa.start_epoch >= cfg.trainer.epochs:
                raise ConfigError(
                    f"swa.start_epoch={swa.start_epoch} must be before the last epoch: 0..{cfg.trainer.epochs - 1} "
                    f"with trainer.epochs={cfg.trainer.epochs} (or train more epochs, or use swa.start_fraction)."
                )
        elif swa.get("start_fraction") is None:
            raise ConfigError("swa.start_fraction=None must be in (0, 1) when swa.start_epoch is null.")


def _check_model_overrides(cfg: DictConfig) -> None:
    """Dropout rates passed to the model's config: torch would refuse them only once a run exists."""
    overrides = cfg.model.get("config_overrides") or {}
    for key, value in overrides.items():
        if "dropout" in str(key) and value is not None and not FRACTION.admits(value):
            raise ConfigError(f"model.config_overrides.{key}={show(value)} must be a number in [0, 1).")


def _check_reinit(cfg: DictConfig, n_layers: int | None) -> None:
    n = cfg.reinit.n
    if n_layers is not None and n > n_layers:
        raise ConfigError(f"reinit.n={n} but {cfg.model.name} has {n_layers} encoder layers; use 0..{n_layers}.")


def _check_registry(cfg: DictConfig) -> None:
    """tracking.register_as before any training: MLflow would refuse the name only after every fold ran."""
    name = cfg.tracking.get("register_as")
    if name is None:
        return
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"tracking.register_as={show(name)} must be a model name, e.g. tracking.register_as=readability.")
    norm = posixpath.normpath(name)
    if "/" in name or ":" in name or norm != name or norm == "." or norm.startswith(".."):
        raise ConfigError(f"tracking.register_as={show(name)}: MLflow model names cannot contain '/' or ':' or be a "
                          f"path like '.' or '..'; use e.g. {show(name.replace('/', '-').replace(':', '-').strip('.') or 'model')}.")
    if not cfg.trainer.save_models:
        raise ConfigError(f"tracking.register_as={show(name)} registers the run's fold models, which only "
                          f"trainer.save_models=true keeps; add trainer.save_models=true.")


EXPERIMENT_NAME_LIMIT = 500  # MLflow's (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH)


def check_experiment(cfg: DictConfig) -> None:
    """tracking.experiment before any store or study is made: MLflow refuses a name over its limit
    only when it creates the experiment; an empty one would log to the default silently."""
    name = cfg.tracking.get("experiment") if "tracking" in cfg else None
    if name is None:
        return
    if not str(name).strip():
        raise ConfigError(f"tracking.experiment={show(name)} names no experiment; give a name "
                          f"(tracking.experiment=my-experiment) or null (the default: 'ftsweep' for a run, "
                          f"one named after its command for a sweep).")
    if len(str(name)) > EXPERIMENT_NAME_LIMIT:
        raise ConfigError(f"tracking.experiment is {len(str(name))} characters long; MLflow takes at most "
                          f"{EXPERIMENT_NAME_LIMIT}: give a shorter name.")


PREDICT_RANGES = {"batch_size": POSITIVE_INT}


def validate_predict(cfg: DictConfig) -> None:
    """`python -m ftsweep.predict`'s own keys, with the same one-line errors as training."""
    for key, rule in PREDICT_RANGES.items():
        check_range(cfg, key, rule)
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"device={show(cfg.device)} is not one of auto, cuda, cpu.")
    if not isinstance(cfg.allow_partial, bool):
        raise ConfigError(f"allow_partial={show(cfg.allow_partial)} must be true or false.")
