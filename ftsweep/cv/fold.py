"""One fold from a config: the model (a copy of the backbone + head, re-init, bias at the
target mean, speed switches), its optimizer, then the fold loop.

The one place a fold is set up: run_cv, benchmarks/throughput.py and the GPU check all
call it, so what they time is what a CV run trains.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig
from torch import nn

from ftsweep.model.param_groups import build_optimizer
from ftsweep.model.regressor import build_regressor
from ftsweep.model.reinit import reinit_top_layers
from ftsweep.model.speed import prepare_model
from ftsweep.train.loop import FoldResult, FoldSplit, MetricSink, ProgressReporter, Runtime, fit_fold


def build_fold_model(cfg: DictConfig, backbone: nn.Module, split: FoldSplit, runtime: Runtime) -> nn.Module:
    """A fresh regressor for this fold, on its device, seeded with the fold's seed. The backbone
    is copied, so one loaded backbone serves every fold."""
    with runtime.phases.phase("model_setup"):
        torch.manual_seed(runtime.seed)
        model = build_regressor(copy.deepcopy(backbone), cfg.head)
        reinit_top_layers(model, int(cfg.reinit.n), bool(cfg.reinit.pooler))
        if cfg.head.init_bias_to_target_mean:
            torch.nn.init.constant_(model.regressor.bias, float(split.targets[split.train_rows].mean()))
        model.to(runtime.device)
        return prepare_model(model, cfg.trainer)  # gradient checkpointing, torch.compile (opt-in: compiles lazily)


def train_model(model: nn.Module, cfg: DictConfig, split: FoldSplit, runtime: Runtime,
                sink: MetricSink | None = None, progress: ProgressReporter | None = None) -> FoldResult:
    """Train a built fold model with a fresh optimizer (its parameter groups from cfg.optimizer)."""
    optimizer = build_optimizer(model, cfg.optimizer, runtime.device)
    return fit_fold(model, optimizer, cfg, split, runtime, sink, progress)


def train_fold(cfg: DictConfig, backbone: nn.Module, split: FoldSplit, runtime: Runtime,
               sink: MetricSink | None = None, progress: ProgressReporter | None = None) -> FoldResult:
    """Build and train one fold from `cfg`."""
    model = build_fold_model(cfg, backbone, split, runtime)
    return train_model(model, cfg, split, runtime, sink, progress)
