"""Re-initialise the top n encoder layers (and the pooler) before fine-tuning.

The top layers of a pre-trained encoder are the most specialised to the
pre-training task; starting them fresh helps small regression sets
(Zhang et al., "Revisiting few-sample BERT fine-tuning").
"""

from __future__ import annotations

from torch import nn

from ftsweep.errors import ConfigError
from ftsweep.model.layers import HEAD, assign_layers, num_layers


def reinit_top_layers(model: nn.Module, n: int, pooler: bool) -> list[str]:
    """Re-initialise in place; return the names of the parameters that were reset."""
    assignment = assign_layers(model)
    n_layers = num_layers(assignment)
    if not 0 <= n <= n_layers:
        raise ConfigError(f"reinit.n={n} but the model has {n_layers} encoder layers; use 0..{n_layers}.")
    targets = {f"layer_{k}" for k in range(n_layers - n, n_layers)}
    std = float(getattr(model.backbone.config, "initializer_range", 0.02))
    reset: list[str] = []
    for mod_name, module in model.named_modules():
        own = [f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        layer = assignment.get(own[0])
        in_pooler = pooler and layer == HEAD and mod_name.startswith("backbone.pooler")
        if layer in targets or in_pooler:
            if _reset(module, std):
                reset += own
    return reset


def _reset(module: nn.Module, std: float) -> bool:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        return True
    if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm"):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
        return True
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        return True
    raise ConfigError(f"reinit does not know how to reset {type(module).__name__} ({module}); reinit.n=0 avoids it.")
