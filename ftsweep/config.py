"""Cross-field config checks, run before any weights or data load.

Each problem raises ConfigError with one line naming the key and what would be
valid, so a typo in a sweep costs seconds, not a failed job an hour in.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ftsweep.errors import ConfigError
from ftsweep.speed import COMPILE_CHOICES

CHOICES = {
    "trainer.precision": ("auto", "bf16", "fp32"),
    "trainer.device": ("auto", "cuda", "cpu"),
    "model.source": ("hub", "bundled", "config"),
    "head.type": ("pooler", "cls", "mean", "attention"),
    "optimizer.name": ("adamw", "llrd", "grouped_llrd"),
    "scheduler.name": ("linear", "cosine", "constant"),
    "eval.strategy": ("epoch", "frequent"),
    "swa.anneal_strategy": ("cos", "linear"),
}


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


def _positive(cfg: DictConfig, key: str, integer: bool = False) -> None:
    value = _get(cfg, key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{key}={value!r} must be {kind}.")


def validate(cfg: DictConfig, n_layers: int | None = None, max_tokens: int | None = None) -> None:
    """Raise ConfigError on the first impossible setting. `n_layers`, `max_tokens`: the model's, when known."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {', '.join(allowed)}.")
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size", "trainer.max_length",
                "trainer.pad_to_multiple_of"):
        _positive(cfg, key, integer=True)
    if max_tokens is not None and cfg.trainer.max_length > max_tokens:
        raise ConfigError(
            f"trainer.max_length={cfg.trainer.max_length} exceeds {cfg.model.name}'s limit of {max_tokens} tokens; "
            f"use trainer.max_length<={max_tokens} (longer texts are truncated)."
        )
    if cfg.trainer.get("max_steps") is not None:
        _positive(cfg, "trainer.max_steps", integer=True)
    _check_cv(cfg)
    _check_speed_and_memory(cfg)
    _check_optimizer(cfg, n_layers)
    _check_schedule(cfg)
    _check_reinit(cfg, n_layers)
    for key in ("data.id_column", "data.text_column", "data.target_column"):
        if not _get(cfg, key) or not str(_get(cfg, key)).strip():
            raise ConfigError(f"{key} is empty; name the CSV column to use.")


def _check_cv(cfg: DictConfig) -> None:
    n = cfg.cv.n_folds
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"cv.n_folds={n!r} must be an integer >= 2.")
    folds = cfg.cv.get("folds")
    if folds is not None:
        bad = [f for f in folds if not isinstance(f, int) or not 0 <= f < n]
        if bad or len(folds) == 0:
            raise ConfigError(f"cv.folds={list(folds)} must be a non-empty list of fold numbers in 0..{n - 1}.")


def _check_optimizer(cfg: DictConfig, n_layers: int | None) -> None:
    opt = cfg.optimizer
    for key in ("lr", "head_lr"):
        if key in opt:
            _positive(cfg, f"optimizer.{key}")
    if opt.name == "llrd":
        _positive(cfg, "optimizer.layer_decay")
    if opt.name == "grouped_llrd":
        _positive(cfg, "optimizer.n_groups", integer=True)
        if len(opt.group_lrs) != opt.n_groups:
            raise ConfigError(
                f"optimizer.group_lrs has {len(opt.group_lrs)} rates for optimizer.n_groups={opt.n_groups}; give one per group."
            )
        for i, lr in enumerate(opt.group_lrs):
            if not isinstance(lr, int | float) or lr <= 0:
                raise ConfigError(f"optimizer.group_lrs[{i}]={lr!r} must be a positive number.")
        if n_layers is not None and opt.n_groups > n_layers:
            raise ConfigError(f"optimizer.n_groups={opt.n_groups} is more than the model's {n_layers} layers.")
    if opt.weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={opt.weight_decay} must be >= 0.")


def _check_schedule(cfg: DictConfig) -> None:
    sched, swa, ev = cfg.scheduler, cfg.swa, cfg.eval
    if sched.get("warmup_steps") is not None and sched.get("warmup_ratio") is not None:
        raise ConfigError("scheduler.warmup_steps and scheduler.warmup_ratio are both set; keep one (set the other to null).")
    if sched.get("warmup_steps") is not None and (not isinstance(sched.warmup_steps, int) or sched.warmup_steps < 0):
        raise ConfigError(f"scheduler.warmup_steps={sched.warmup_steps!r} must be an integer >= 0.")
    if sched.get("warmup_ratio") is not None and not 0 <= sched.warmup_ratio < 1:
        raise ConfigError(f"scheduler.warmup_ratio={sched.warmup_ratio} must be in [0, 1).")
    if ev.strategy == "frequent":
        _positive(cfg, "eval.every_n_batches", integer=True)
    if not isinstance(ev.start_epoch, int) or not 0 <= ev.start_epoch < cfg.trainer.epochs:
        raise ConfigError(f"eval.start_epoch={ev.start_epoch} must be in 0..{cfg.trainer.epochs - 1} (trainer.epochs={cfg.trainer.epochs}).")
    if swa.enabled:
        if (swa.get("lr") is None) == (swa.get("lr_scale") is None):
            raise ConfigError("swa=on needs exactly one of swa.lr (one rate for every group) or swa.lr_scale (each group's peak x factor).")
        if swa.get("lr") is not None:
            _positive(cfg, "swa.lr")
        else:
            _positive(cfg, "swa.lr_scale")
        if swa.get("start_epoch") is not None:
            if not isinstance(swa.start_epoch, int) or not 0 <= swa.start_epoch < cfg.trainer.epochs:
                raise ConfigError(
                    f"swa.start_epoch={swa.start_epoch} must be before the last epoch: 0..{cfg.trainer.epochs - 1} "
                    f"with trainer.epochs={cfg.trainer.epochs} (or train more epochs, or use swa.start_fraction)."
                )
        elif swa.get("start_fraction") is None or not 0 < swa.start_fraction < 1:
            raise ConfigError(f"swa.start_fraction={swa.get('start_fraction')} must be in (0, 1) when swa.start_epoch is null.")
        if not isinstance(swa.anneal_steps, int) or swa.anneal_steps < 0:
            raise ConfigError(f"swa.anneal_steps={swa.anneal_steps!r} must be an integer >= 0.")


def _check_reinit(cfg: DictConfig, n_layers: int | None) -> None:
    n = cfg.reinit.n
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"reinit.n={n!r} must be an integer >= 0.")
    if n_layers is not None and n > n_layers:
        raise ConfigError(f"reinit.n={n} but {cfg.model.name} has {n_layers} encoder layers; use 0..{n_layers}.")


def _check_speed_and_memory(cfg: DictConfig) -> None:
    tcfg = cfg.trainer
    _positive(cfg, "trainer.grad_accum_steps", integer=True)
    if not isinstance(tcfg.gradient_checkpointing, bool):
        raise ConfigError(f"trainer.gradient_checkpointing={tcfg.gradient_checkpointing!r} must be true or false.")
    if isinstance(tcfg.compile, int | float) and not isinstance(tcfg.compile, bool) or tcfg.compile not in COMPILE_CHOICES:
        raise ConfigError(f"trainer.compile={tcfg.compile!r} is not one of false, true (= default), default, reduce-overhead.")
