"""Per-group learning-rate schedules: warm-up, then linear / cosine / constant, then SWA.

The same object drives training and the dry-run plan (ftsweep.plan), so the
curves a user inspects before a sweep are the ones the sweep will use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR

from ftsweep.config.options import SCHEDULERS
from ftsweep.errors import ConfigError


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    swa_start: int | None  # first optimizer step (0-based) taken at the SWA rate; None: no SWA


def plan_steps(cfg: DictConfig, batches_per_epoch: int) -> StepPlan:
    """Turn epochs / ratios / caps into optimizer-step counts (validated, one place).

    `batches_per_epoch` counts batches of trainer.batch_size rows; with trainer.grad_accum_steps=k
    every k of them make one optimizer step (the epoch's last, shorter group steps too), and every
    count here (warm-up, SWA start, max_steps) is in optimizer steps.
    """
    steps_per_epoch = -(-batches_per_epoch // int(cfg.trainer.get("grad_accum_steps") or 1))
    total = steps_per_epoch * int(cfg.trainer.epochs)
    if cfg.trainer.get("max_steps") is not None:
        total = min(total, int(cfg.trainer.max_steps))
    return StepPlan(steps_per_epoch, total, warmup_steps(cfg.scheduler, total), swa_start(cfg.swa, steps_per_epoch, total))


def warmup_steps(sched_cfg: DictConfig, total: int) -> int:
    steps, ratio = sched_cfg.get("warmup_steps"), sched_cfg.get("warmup_ratio")
    if steps is not None and ratio is not None:
        raise ConfigError(
            f"scheduler.warmup_steps={steps} and scheduler.warmup_ratio={ratio} are both set; keep one (the other null)."
        )
    warm = int(steps) if steps is not None else round(float(ratio or 0.0) * total)
    if warm < 0 or warm >= max(total, 1):
        raise ConfigError(f"warm-up of {warm} steps does not fit the run's {total} optimizer steps; shorten it.")
    return warm


def swa_start(swa_cfg: DictConfig, steps_per_epoch: int, total: int) -> int | None:
    if not swa_cfg.enabled:
        return None
    if swa_cfg.get("start_epoch") is not None:
        start = int(swa_cfg.start_epoch) * steps_per_epoch
        where = f"swa.start_epoch={swa_cfg.start_epoch}"
    else:
        start = round(float(swa_cfg.start_fraction) * total)
        where = f"swa.start_fraction={swa_cfg.start_fraction}"
    if not 0 < start < total:
        raise ConfigError(
            f"{where} starts SWA at step {start}, outside this run's {total} steps; "
            f"start after the first step and before the last epoch (or train more epochs)."
        )
    return start


# After the warm-up, each group's peak rate times the shape's factor at `progress` (0 -> 1).
_SHAPES = SCHEDULERS.implement({
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
    "constant": lambda progress: 1.0,
})


def lr_factor(name: str, warmup: int, total: int):
    """Multiplier of each group's peak rate at step s (the transformers get_scheduler shapes)."""
    if name not in _SHAPES:
        raise ConfigError(SCHEDULERS.unknown(name))
    shape = _SHAPES[name]

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return shape((step - warmup) / max(1, total - warmup))

    return factor


class LrSchedule:
    """Call `step()` after every optimizer step; switches to SWALR at `plan.swa_start`."""

    def __init__(self, optimizer: Optimizer, cfg: DictConfig, plan: StepPlan):
        self.optimizer, self.swa_cfg, self.plan = optimizer, cfg.swa, plan
        factor = lr_factor(cfg.scheduler.name, plan.warmup_steps, plan.total_steps)
        self.main = LambdaLR(optimizer, [factor] * len(optimizer.param_groups))
        self.swa: SWALR | None = None
        self.next_step = 0  # the step whose rate the groups now hold

    def swa_active(self, step: int) -> bool:
        return self.plan.swa_start is not None and step >= self.plan.swa_start

    def step(self) -> None:
        self.next_step += 1
        if not self.swa_active(self.next_step):
            self.main.step()
        elif self.swa is None:
            self.main.step()  # the main schedule's rate at the switch is where the anneal starts
            self.swa = SWALR(
                self.optimizer,
                swa_lr=self._swa_rates(),
                anneal_epochs=int(self.swa_cfg.anneal_steps),
                anneal_strategy=str(self.swa_cfg.anneal_strategy),
            )
        else:
            self.swa.step()

    def _swa_rates(self) -> float | list[float]:
        lr, scale = self.swa_cfg.get("lr"), self.swa_cfg.get("lr_scale")
        if (lr is None) == (scale is None):
            raise ConfigError("swa=on needs exactly one of swa.lr (one rate for all groups) or swa.lr_scale (per group).")
        if lr is not None:
            return float(lr)
        return [g["initial_lr"] * float(scale) for g in self.optimizer.param_groups]
