"""Optimizer parameter groups: one rate per layer (plain, LLRD or grouped LLRD).

Every group carries an absolute `lr` and its `layer` name; schedulers scale each
group's own initial rate, so warm-up and decay keep the LLRD ratios. Biases and
norm weights (every 1-d tensor) get no weight decay, as in transformers' Trainer.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ftsweep.config.options import OPTIMIZERS
from ftsweep.errors import ConfigError
from ftsweep.model.layers import EMBEDDINGS, HEAD, assign_layers, layer_names, num_layers


def layer_rates(opt_cfg: DictConfig, n_layers: int) -> dict[str, float]:
    """Peak learning rate of every layer name (embeddings, layer_i, head)."""
    if opt_cfg.name not in _RATES:
        raise ConfigError(OPTIMIZERS.unknown(opt_cfg.name))
    rates = _RATES[opt_cfg.name](opt_cfg, n_layers)
    rates[HEAD] = float(opt_cfg.head_lr)
    return rates


def _one_rate(opt_cfg: DictConfig, n_layers: int) -> dict[str, float]:
    return {layer: float(opt_cfg.lr) for layer in layer_names(n_layers)}


def _decayed_rates(opt_cfg: DictConfig, n_layers: int) -> dict[str, float]:
    """LLRD: the top layer at optimizer.lr, each layer below x layer_decay, the embeddings last."""
    top, decay = float(opt_cfg.lr), float(opt_cfg.layer_decay)
    rates = {f"layer_{k}": top * decay ** (n_layers - 1 - k) for k in range(n_layers)}
    rates[EMBEDDINGS] = top * decay**n_layers
    return rates


def layer_sets(n_layers: int, n_groups: int) -> list[list[int]]:
    """Contiguous, near-equal sets of layer indices, lowest first (12 into 3: 0-3, 4-7, 8-11)."""
    if not 1 <= n_groups <= n_layers:
        raise ConfigError(f"optimizer.n_groups={n_groups} must be between 1 and the model's {n_layers} layers.")
    return [list(map(int, s)) for s in np.array_split(np.arange(n_layers), n_groups)]


def _grouped_rates(opt_cfg: DictConfig, n_layers: int) -> dict[str, float]:
    group_lrs = [float(x) for x in opt_cfg.group_lrs]
    if len(group_lrs) != int(opt_cfg.n_groups):
        raise ConfigError(
            f"optimizer.group_lrs has {len(group_lrs)} rates but optimizer.n_groups={opt_cfg.n_groups}; give one per group."
        )
    rates = {}
    for lr, layers in zip(group_lrs, layer_sets(n_layers, int(opt_cfg.n_groups)), strict=True):
        rates.update({f"layer_{k}": lr for k in layers})
    rates[EMBEDDINGS] = group_lrs[0]  # the embeddings join the lowest set
    return rates


_RATES = OPTIMIZERS.implement({"adamw": _one_rate, "llrd": _decayed_rates, "grouped_llrd": _grouped_rates})


def build_param_groups(model: nn.Module, opt_cfg: DictConfig) -> list[dict]:
    """Groups ordered bottom to top, split into decay / no-decay within each layer."""
    assignment = assign_layers(model)
    n_layers = num_layers(assignment)
    rates = layer_rates(opt_cfg, n_layers)
    params = dict(model.named_parameters())
    groups = []
    for layer in layer_names(n_layers):
        names = [n for n, lyr in assignment.items() if lyr == layer]
        for decay in (True, False):
            members = [params[n] for n in names if (params[n].ndim >= 2) == decay]
            if members:
                groups.append(
                    {
                        "params": members,
                        "lr": rates[layer],
                        "weight_decay": float(opt_cfg.weight_decay) if decay else 0.0,
                        "layer": layer,
                        "param_names": [n for n in names if (params[n].ndim >= 2) == decay],
                    }
                )
    return groups


def build_optimizer(model: nn.Module, opt_cfg: DictConfig, device: torch.device) -> torch.optim.AdamW:
    groups = build_param_groups(model, opt_cfg)
    return torch.optim.AdamW(
        groups,
        lr=groups[0]["lr"],
        betas=tuple(opt_cfg.betas),
        eps=float(opt_cfg.eps),
        fused=device.type == "cuda" or None,
    )


def group_layers(optimizer: torch.optim.Optimizer) -> list[str]:
    """Distinct layer names in group order (each layer's rate is logged once)."""
    return list(dict.fromkeys(g["layer"] for g in optimizer.param_groups))
