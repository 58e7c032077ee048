"""Value rules: which values each key admits (ranges, choices, switches), and how a value is shown
back to the user. The bottom of config/: the cross-field rules (checks.py), the search's settings
and the command line's checks all word their refusals with these."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from ftsweep.config.options import COMPILE_CHOICES, HEADS, OPTIMIZERS, SCHEDULERS
from ftsweep.errors import ConfigError

# Below this, [CLS]/[SEP] leave almost no text: the run would measure nothing useful.
MIN_TOKENS = 8
SEED_MAX = 2**32 - 1  # numpy / scikit-learn seeds

CHOICES = {
    "trainer.precision": ("auto", "bf16", "fp32"),
    "trainer.device": ("auto", "cuda", "cpu"),
    "model.source": ("hub", "bundled", "config"),
    "head.type": HEADS.names,
    "optimizer.name": OPTIMIZERS.names,
    "scheduler.name": SCHEDULERS.names,
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


def whole(value):
    """A whole-number float as the int it stands for (Hydra reads 2e3 as 2000.0); else `value`."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
    "trainer.workers_per_gpu": POSITIVE_INT,
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
    "tracking.system_metrics_interval": Range(low=0, low_open=True, nullable=True),
}


def value_at(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def has_key(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()  # `in node` is False for ??? values


def show(value) -> str:
    """A value as the user types it on the command line: null, true, 'abc', [0.9, 1.5]."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def shown(cfg: DictConfig, key: str) -> str:
    """`key=value`, plus where the value came from when it is an interpolation (${model.lr})."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    raw = node._get_node(leaf)._value() if isinstance(node, DictConfig) else None
    origin = f" (from {raw})" if isinstance(raw, str) and "${" in raw else ""
    return f"{key}={show(value_at(cfg, key))}{origin}"


def check_range(cfg: DictConfig, key: str, rule: Range) -> None:
    value = value_at(cfg, key)
    if value is None and rule.nullable:
        return
    if not rule.admits(value):
        raise ConfigError(f"{shown(cfg, key)} must be {rule.describe()}.")


def check_values(cfg: DictConfig) -> None:
    """Each key on its own: a choice among its options, a switch, a number in its range."""
    for key, allowed in CHOICES.items():
        if has_key(cfg, key) and not any(value_at(cfg, key) is a or (isinstance(a, str) and value_at(cfg, key) == a)
                                         for a in allowed):
            listed = ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
            raise ConfigError(f"{key}={show(value_at(cfg, key))} is not one of {listed}.")
    for key in BOOLEANS:
        if has_key(cfg, key) and not isinstance(value_at(cfg, key), bool):
            raise ConfigError(f"{key}={show(value_at(cfg, key))} must be true or false.")
    for key, rule in RANGES.items():
        if has_key(cfg, key):
            check_range(cfg, key, rule)
    compile_mode = value_at(cfg, "trainer.compile")
    if has_key(cfg, "trainer.compile") and (isinstance(compile_mode, int | float) and not isinstance(compile_mode, bool)
                                           or compile_mode not in COMPILE_CHOICES):
        raise ConfigError(f"trainer.compile={compile_mode!r} is not one of false, true (= default), default, reduce-overhead.")
