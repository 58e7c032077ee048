"""Opt-in switches on a built model: gradient checkpointing (memory) and torch.compile (speed).

Both default off. Compiling costs seconds to minutes per distinct batch shape before the
first step, so it pays only on a GPU over many steps; on a CPU or a short run eager wins.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from ftsweep.config.options import COMPILE_CHOICES

# trainer.compile -> torch.compile keyword arguments.
#  default:         static shapes; inductor code specialised per (batch, width) shape.
#  reduce-overhead: CUDA graphs, one recorded per shape bucket and replayed every step, so a
#                   small batch no longer waits on Python and kernel launches. Shapes are left
#                   dynamic (compiled at most ~twice); each new shape records a graph, not a compile.
COMPILE = {
    True: {"dynamic": False},
    "default": {"dynamic": False},
    "reduce-overhead": {"mode": "reduce-overhead", "dynamic": None},
}
if (False, *COMPILE) != COMPILE_CHOICES:  # config checks accept what this table can compile
    raise TypeError(f"trainer.compile: arguments for {list(COMPILE)}, options are {COMPILE_CHOICES}")
SHAPES_PER_WIDTH = 16  # batch sizes per padded width: full train / eval batches and each fold's last ones


def shape_budget(tcfg: DictConfig) -> int:
    """An upper bound on the distinct input shapes a run produces (see batching.pad_batch)."""
    widths = -(-int(tcfg.max_length) // int(tcfg.pad_to_multiple_of)) + 1
    return widths * SHAPES_PER_WIDTH


def prepare_model(model: nn.Module, tcfg: DictConfig) -> nn.Module:
    """Apply trainer.gradient_checkpointing and trainer.compile to the model's backbone, in place."""
    if tcfg.get("gradient_checkpointing"):
        # Non-reentrant: works with frozen inputs, autocast and torch.compile, and is torch's default to be.
        # transformers >= 5.2x renamed it activation_checkpointing_enable (the old name warns).
        enable = getattr(model.backbone, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mode = tcfg.get("compile") or False
    if mode:
        # Past the recompile limit (8 by default) dynamo silently runs every further shape eager.
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), shape_budget(tcfg)))
        model.backbone.compile(**COMPILE[mode])  # in place: state_dict keys and SWA copies stay as they are
    return model
