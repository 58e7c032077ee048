"""The per-layer learning-rate plan of a config, without training (python -m ftsweep.plan).

Builds the model from its config on the meta device (no weight download, no
memory), counts the training rows of the first fold, and steps the very schedule
object the trainer uses.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ftsweep.config.checks import validate
from ftsweep.cv.pipeline import folds_to_run, load_data
from ftsweep.data.batching import steps_per_epoch
from ftsweep.model.param_groups import build_optimizer, group_layers
from ftsweep.model.regressor import architecture_config, build_regressor, random_backbone
from ftsweep.train import plots
from ftsweep.train.schedule import LrSchedule, plan_steps


def lr_table(cfg: DictConfig, n_train_rows: int) -> pd.DataFrame:
    """Columns step, layer, lr: the rate each layer's groups use at each optimizer step."""
    validate(cfg, int(architecture_config(cfg.model).num_hidden_layers))
    with torch.device("meta"):
        model = build_regressor(random_backbone(cfg.model), cfg.head)
    optimizer = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    plan = plan_steps(cfg, steps_per_epoch(n_train_rows, int(cfg.trainer.batch_size)))
    layers = group_layers(optimizer)
    first_group = [next(g for g in optimizer.param_groups if g["layer"] == name) for name in layers]
    schedule = LrSchedule(optimizer, cfg, plan)
    rates = np.empty((plan.total_steps, len(layers)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()": no training here
        for step in range(plan.total_steps):
            rates[step] = [g["lr"] for g in first_group]
            schedule.step()
    return pd.DataFrame({
        "step": np.repeat(np.arange(plan.total_steps), len(layers)),
        "layer": np.tile(layers, plan.total_steps),
        "lr": rates.reshape(-1),
    })


def fold0_train_rows(cfg: DictConfig) -> int:
    """Training rows of the first fold the run would train (the data checked as a run checks it)."""
    frame = load_data(cfg).frame
    return int((frame["fold"] != folds_to_run(cfg)[0]).sum())


def write_plan(cfg: DictConfig, out_dir: Path) -> tuple[Path, Path, Path]:
    """lr_schedule.csv, lr_schedule.png (curves) and lr_at_step_<k>.png (bars at the warm-up's end)."""
    table = lr_table(cfg, fold0_train_rows(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "lr_schedule.csv", out_dir / "lr_schedule.png"
    table.to_csv(csv_path, index=False, float_format="%.17g")
    wide = table.pivot(index="step", columns="layer", values="lr")[list(dict.fromkeys(table["layer"]))]
    name = f"{cfg.get('label') or cfg.optimizer.name} on {cfg.model.name}"
    plots.lr_curves((list(wide.columns), wide.to_numpy()), png_path, f"{name}: learning rate per layer")
    step = min(int(cfg.scheduler.get("warmup_steps") or 0), len(wide) - 1)
    bars = plots.lr_bars(list(wide.columns), wide.iloc[step].to_numpy(), out_dir / f"lr_at_step_{step}.png",
                         f"{name}: learning rate per layer at step {step}")
    return csv_path, png_path, bars
