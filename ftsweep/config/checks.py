"""Config checks, run before any weights, data or MLflow store are touched.

Each problem raises ConfigError with one line naming the key the user typed and
what would be valid, so a typo in a sweep costs seconds, not a failed job an
hour in. Ranges live in one table; cross-field rules follow it.
"""

from __future__ import annotations

import difflib
import logging
import math
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ftsweep.errors import ConfigError
from ftsweep.model.speed import COMPILE_CHOICES

log = logging.getLogger("ftsweep")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("data", "trainer", "model", "head", "optimizer", "scheduler", "reinit", "swa", "eval", "cv", "tracking")
# Below this, [CLS]/[SEP] leave almost no text: the run would measure nothing useful.
MIN_TOKENS = 8
SEED_MAX = 2**32 - 1  # numpy / scikit-learn seeds

CHOICES = {
    "trainer.precision": ("auto", "bf16", "fp32"),
    "trainer.device": ("auto", "cuda", "cpu"),
    "model.source": ("hub", "bundled", "config"),
    "head.type": ("pooler", "cls", "mean", "attention"),
    "optimizer.name": ("adamw", "llrd", "grouped_llrd"),
    "scheduler.name": ("linear", "cosine", "constant"),
    "eval.strategy": ("epoch", "frequent"),
    "swa.anneal_strategy": ("cos", "linear"),
    "tracking.resume": ("auto", True, False),
}
# Switches: a typo such as `trainer.save_models=yes` must not be read as "true".
BOOLEANS = ("trainer.save_models", "trainer.gradient_checkpointing", "tracking.log_lr", "reinit.pooler", "swa.enabled", "head.init_bias_to_target_mean")


@dataclass(frozen=True)
class Range:
    """A numeric key: integer or real, bounds (open or closed), may it be null."""

    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False

    def admits(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.low == 0 and self.low_open and self.high == math.inf:
            text = "a positive integer" if self.integer else "a positive number"
        elif self.high == math.inf:
            text = f"{kind} {'>' if self.low_open else '>='} {low}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {left}{low}, {high}{right}"
        return text + (" (or null)" if self.nullable else "")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE = Range(low=0, low_open=True)
POSITIVE_INT = Range(integer=True, low=0, low_open=True)
FRACTION = Range(low=0, high=1, high_open=True)
SEED = Range(integer=True, low=0, high=SEED_MAX)
# Source keys first (model.lr before the optimizer rates derived from it), so an error names
# the key the user typed. A key absent from the composed config is not checked.
RANGES: dict[str, Range] = {
    "model.lr": POSITIVE,
    "model.reinit_layers": Range(integer=True, low=0),
    "data.max_rows": Range(integer=True, low=1, nullable=True),
    "data.n_rows": POSITIVE_INT,
    "data.words_per_passage": POSITIVE_INT,
    "data.generator_seed": SEED,
    "trainer.epochs": POSITIVE_INT,
    "trainer.batch_size": POSITIVE_INT,
    "trainer.eval_batch_size": POSITIVE_INT,
    "trainer.max_length": Range(integer=True, low=MIN_TOKENS),
    "trainer.pad_to_multiple_of": POSITIVE_INT,
    "trainer.seed": SEED,
    "trainer.grad_clip": Range(low=0, low_open=True, nullable=True),  # a negative norm flips the gradient
    "trainer.max_steps": Range(integer=True, low=1, nullable=True),
    "trainer.num_threads": Range(integer=True, low=1, nullable=True),
    "trainer.grad_accum_steps": POSITIVE_INT,
    "cv.n_folds": Range(integer=True, low=2),
    "cv.fold_seed": SEED,
    "cv.n_bins": Range(integer=True, low=1, nullable=True),
    "head.dropout": FRACTION,
    "head.attention_hidden": POSITIVE_INT,
    "optimizer.lr": POSITIVE,
    "optimizer.head_lr": POSITIVE,
    "optimizer.layer_decay": POSITIVE,
    "optimizer.n_groups": POSITIVE_INT,
    "optimizer.weight_decay": Range(low=0),
    "optimizer.eps": POSITIVE,
    "scheduler.warmup_steps": Range(integer=True, low=0, nullable=True),
    "scheduler.warmup_ratio": Range(low=0, high=1, high_open=True, nullable=True),
    "reinit.n": Range(integer=True, low=0),
    "swa.start_epoch": Range(integer=True, low=0, nullable=True),
    "swa.start_fraction": Range(low=0, high=1, low_open=True, high_open=True, nullable=True),
    "swa.lr": Range(low=0, low_open=True, nullable=True),
    "swa.lr_scale": Range(low=0, low_open=True, nullable=True),
    "swa.anneal_steps": Range(integer=True, low=0),
    "eval.every_n_batches": Range(integer=True, low=0, low_open=True, nullable=True),
    "eval.start_epoch": Range(integer=True, low=0),
    "table.rope": Range(low=0),
}


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _has(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()  # `in node` is False for ??? values


def show(value) -> str:
    """A value as the user types it on the command line: null, true, 'abc', [0.9, 1.5]."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def _shown(cfg: DictConfig, key: str) -> str:
    """`key=value`, plus where the value came from when it is an interpolation (${model.lr})."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    raw = node._get_node(leaf)._value() if isinstance(node, DictConfig) else None
    origin = f" (from {raw})" if isinstance(raw, str) and "${" in raw else ""
    return f"{key}={show(_get(cfg, key))}{origin}"


def _check_range(cfg: DictConfig, key: str, rule: Range) -> None:
    value = _get(cfg, key)
    if value is None and rule.nullable:
        return
    if not rule.admits(value):
        raise ConfigError(f"{_shown(cfg, key)} must be {rule.describe()}.")


def validate(cfg: DictConfig, n_layers: int | None = None, max_tokens: int | None = None) -> None:
    """Raise ConfigError on the first impossible setting. `n_layers`, `max_tokens`: the model's, when known."""
    check_structure(cfg)
    for key, allowed in CHOICES.items():
        if _has(cfg, key) and not any(_get(cfg, key) is a or (isinstance(a, str) and _get(cfg, key) == a) for a in allowed):
            shown = ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
            raise ConfigError(f"{key}={show(_get(cfg, key))} is not one of {shown}.")
    for key in BOOLEANS:
        if _has(cfg, key) and not isinstance(_get(cfg, key), bool):
            raise ConfigError(f"{key}={show(_get(cfg, key))} must be true or false.")
    for key, rule in RANGES.items():
        if _has(cfg, key):
            _check_range(cfg, key, rule)
    padded = -(-cfg.trainer.max_length // cfg.trainer.pad_to_multiple_of) * cfg.trainer.pad_to_multiple_of
    if max_tokens is not None and cfg.trainer.max_length <= max_tokens < padded:
        raise ConfigError(f"trainer.pad_to_multiple_of={cfg.trainer.pad_to_multiple_of} pads batches to {padded} tokens, "
                          f"beyond {cfg.model.name}'s limit of {max_tokens}; use a divisor of {max_tokens} such as 8 or 64.")
    if max_tokens is not None and cfg.trainer.max_length > max_tokens:
        raise ConfigError(
            f"trainer.max_length={cfg.trainer.max_length} exceeds {cfg.model.name}'s limit of {max_tokens} tokens; "
            f"use trainer.max_length<={max_tokens} (longer texts are truncated)."
        )
    _check_cv(cfg)
    _check_speed_and_memory(cfg)
    _check_optimizer(cfg, n_layers)
    _check_schedule(cfg)
    _check_reinit(cfg, n_layers)
    _check_model_overrides(cfg)
    _check_registry(cfg)
    for key in ("data.id_column", "data.text_column", "data.target_column"):
        if not isinstance(_get(cfg, key), str) or not _get(cfg, key).strip():
            raise ConfigError(f"{key}={_get(cfg, key)!r} must name a CSV column.")


def check_structure(cfg: DictConfig) -> None:
    """Every group and key present, none unknown, no `???` left: before anything reads the config."""
    check_known_keys(cfg)
    _check_required(cfg)


def _check_required(cfg: DictConfig) -> None:
    """`???` values Hydra leaves for the user (data=commonlit needs data.path)."""
    if _has(cfg, "data.path") and OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError(f"data={cfg.data.get('name', 'commonlit')} needs a file: add data.path=/path/to/train.csv")
    for key in ("model.name", "tracking.uri"):
        parent, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(cfg[parent], leaf):
            raise ConfigError(f"{key} is not set; add {key}=...")


@lru_cache(maxsize=1)
def known_keys() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Per group (and "" for the top level): the keys any file under conf/ sets — what
    `+group.key=...` may add — and the keys every option of the group sets — what `~` may not
    remove. Keys nothing reads (`+trainer.epoch=3`, a typo of epochs) would otherwise pass silently."""
    known: dict[str, set[str]] = {group: set() for group in ("", *GROUPS)}
    options: dict[str, list[set[str]]] = {group: [] for group in GROUPS}
    for path in CONF_DIR.rglob("*.yaml"):
        rel = path.relative_to(CONF_DIR)
        node = OmegaConf.to_container(OmegaConf.load(path))
        if not isinstance(node, dict) or rel.name == "predict.yaml":
            continue
        node.pop("defaults", None)
        node.pop("hydra", None)
        if "@package _global_" in path.read_text().split("\n", 3)[0] or len(rel.parts) == 1:
            known[""] |= set(node)
            for group in GROUPS:
                if isinstance(node.get(group), dict):
                    known[group] |= set(node[group])
        elif rel.parts[0] in options:
            known[rel.parts[0]] |= set(node)
            options[rel.parts[0]].append(set(node))
    known[""] |= set(GROUPS)
    required = {g: frozenset(set.intersection(*sets)) if sets else frozenset() for g, sets in options.items()}
    return {g: (frozenset(keys), required.get(g, frozenset())) for g, keys in known.items()}


def check_known_keys(cfg: DictConfig) -> None:
    table = known_keys()
    for group in ("", *GROUPS):
        node = cfg.get(group) if group else cfg
        if not isinstance(node, DictConfig):
            if group in cfg:
                raise ConfigError(f"{group}={node!r} must be the config group {group}, not a value.")
            continue
        known, required = table[group]
        prefix = f"{group}." if group else ""
        for key in node.keys():
            if key not in known:
                near = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean {prefix}{near[0]}?)" if near else " (python -m ftsweep --cfg job lists the keys)"
                raise ConfigError(f"unknown key {prefix}{key}: nothing reads it{hint}.")
        for key in sorted(required - set(node.keys())):
            raise ConfigError(f"{prefix}{key} is missing (removed with ~?); every run needs it: put it back.")
    for group in GROUPS:
        if group not in cfg:
            raise ConfigError(f"the config group {group} is missing; put it back (e.g. {group}=<option>).")


def _check_cv(cfg: DictConfig) -> None:
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
        raise ConfigError(f"{_shown(cfg, 'optimizer.betas')} must be two numbers in [0, 1).")
    if opt.name == "llrd" and opt.layer_decay > 1:
        log.warning("optimizer.layer_decay=%s > 1: lower layers get *higher* rates than the top one "
                    "(usual values are 0.8-0.95).", opt.layer_decay)
    if opt.name == "grouped_llrd":
        if len(opt.group_lrs) != opt.n_groups:
            raise ConfigError(
                f"optimizer.group_lrs has {len(opt.group_lrs)} rates for optimizer.n_groups={opt.n_groups}; give one per group."
            )
        for i, lr in enumerate(opt.group_lrs):
            if not POSITIVE.admits(lr):
                raise ConfigError(f"optimizer.group_lrs[{i}]={lr!r} must be a positive number.")
        if n_layers is not None and opt.n_groups > n_layers:
            raise ConfigError(f"optimizer.n_groups={opt.n_groups} is more than the model's {n_layers} layers.")


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


def _check_speed_and_memory(cfg: DictConfig) -> None:
    tcfg = cfg.trainer
    if isinstance(tcfg.compile, int | float) and not isinstance(tcfg.compile, bool) or tcfg.compile not in COMPILE_CHOICES:
        raise ConfigError(f"trainer.compile={tcfg.compile!r} is not one of false, true (= default), default, reduce-overhead.")


PREDICT_RANGES = {"batch_size": POSITIVE_INT}


def validate_predict(cfg: DictConfig) -> None:
    """`python -m ftsweep.predict`'s own keys, with the same one-line errors as training."""
    for key, rule in PREDICT_RANGES.items():
        _check_range(cfg, key, rule)
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"device={show(cfg.device)} is not one of auto, cuda, cpu.")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or cpu.")
    if not isinstance(cfg.allow_partial, bool):
        raise ConfigError(f"allow_partial={show(cfg.allow_partial)} must be true or false.")
