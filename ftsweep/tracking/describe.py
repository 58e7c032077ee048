"""A run in words: which techniques a config turns on, for MLflow's run description."""

from __future__ import annotations

import shlex

from omegaconf import DictConfig

from ftsweep.config.options import OPTIMIZERS, SCHEDULERS


def techniques(cfg: DictConfig) -> list[str]:
    opt, sched, swa, ev = cfg.optimizer, cfg.scheduler, cfg.swa, cfg.eval
    rates = OPTIMIZERS.describe(opt, opt.name)
    warm = sched.get("warmup_steps") or (f"{sched.warmup_ratio:g} of the steps" if sched.get("warmup_ratio") else None)
    out = [rates, SCHEDULERS.describe(sched, sched.name) + (f" after {warm} warm-up steps" if warm else ", no warm-up")]
    if cfg.reinit.n:
        out.append(f"top {cfg.reinit.n} layer(s) re-initialised" + (" with the pooler" if cfg.reinit.pooler else ""))
    if swa.enabled:
        start = f"epoch {swa.start_epoch}" if swa.get("start_epoch") is not None else f"{swa.start_fraction:g} of the steps"
        rate = f"rate {swa.lr:g}" if swa.get("lr") is not None else f"each group's peak x {swa.lr_scale:g}"
        out.append(f"SWA from {start} at {rate}")
    out.append(f"validation every {ev.every_n_batches} batches of each epoch" if ev.strategy == "frequent"
               else "validation once per epoch")
    return out


def run_description(cfg: DictConfig, label: str, overrides: list[str]) -> str:
    """Markdown for the run page: the row, its techniques, the command that made it, where the plots are."""
    command = " ".join(["python -m ftsweep", *(shlex.quote(o) for o in overrides)])
    lines = [f"**{label}** — {cfg.model.name}, {cfg.cv.n_folds}-fold CV, {cfg.trainer.epochs} epoch(s), "
             f"batch {cfg.trainer.batch_size}", ""]
    lines += [f"- {t}" for t in techniques(cfg)]
    lines += ["", f"Command: `{command}`", "",
              "Per-layer learning rates: artifact `lr_curves.png` (all layers in one chart); "
              "RMSE per fold: the nested fold runs."]
    return "\n".join(lines)
