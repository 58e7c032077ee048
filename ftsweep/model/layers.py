"""Map every parameter of a Regressor to `embeddings`, `layer_<i>` or `head`.

One table of name patterns covers the encoders people fine-tune (BERT, RoBERTa,
XLM-R, DeBERTa v2/v3, ELECTRA, DistilBERT, MiniLM, ...). The layer names double
as MLflow metric keys (`lr/layer_3`).
"""

from __future__ import annotations

import re
from collections import OrderedDict

from torch import nn

from ftsweep.errors import ModelError

EMBEDDINGS, HEAD = "embeddings", "head"

# Backbone-relative name -> layer index (first match wins).
_LAYER_PATTERNS = [
    re.compile(r"^(?:encoder|transformer)\.(?:layer|layers)\.(\d+)\."),  # BERT family, DeBERTa, ELECTRA, DistilBERT
    re.compile(r"^(?:layers|blocks|h)\.(\d+)\."),  # flat stacks (ModernBERT and the like)
]
# Parameters below the first layer: token/position embeddings, ELECTRA's projection,
# DeBERTa's relative-position embeddings and their norm (shared by all layers).
_EMBEDDING_PATTERNS = [
    re.compile(r"^embeddings?[._]"),
    re.compile(r"^embeddings_project\."),
    re.compile(r"^encoder\.(?:rel_embeddings|LayerNorm|conv)\."),
    re.compile(r"^(?:tok_embeddings|embed_tokens|wte|wpe)\."),
]
# Above the last layer but inside the backbone: the pooler and final norms.
_TOP_PATTERNS = [re.compile(r"^pooler\."), re.compile(r"^(?:final_norm|norm|final_layer_norm)\.")]


def layer_of(backbone_name: str) -> str:
    """`embeddings`, `layer_<i>` or `head` for a parameter name inside the backbone."""
    for pattern in _LAYER_PATTERNS:
        match = pattern.match(backbone_name)
        if match:
            return f"layer_{int(match.group(1))}"
    if any(p.match(backbone_name) for p in _EMBEDDING_PATTERNS):
        return EMBEDDINGS
    if any(p.match(backbone_name) for p in _TOP_PATTERNS):
        return HEAD
    raise ModelError(
        f"cannot tell which layer the backbone parameter {backbone_name!r} belongs to; "
        f"this architecture is not supported by layer-wise options yet (see ftsweep/model/layers.py)."
    )


def assign_layers(model: nn.Module) -> OrderedDict[str, str]:
    """Parameter name -> layer name for every trainable parameter of a Regressor."""
    out: OrderedDict[str, str] = OrderedDict()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        out[name] = layer_of(name[len("backbone.") :]) if name.startswith("backbone.") else HEAD
    if not any(v.startswith("layer_") for v in out.values()):
        raise ModelError("found no encoder layers in the backbone; layer-wise options cannot apply to this model.")
    return out


def num_layers(assignment: dict[str, str]) -> int:
    return 1 + max(int(v.split("_")[1]) for v in assignment.values() if v.startswith("layer_"))


def layer_names(n_layers: int) -> list[str]:
    """Bottom to top: embeddings, layer_0 ... layer_{n-1}, head."""
    return [EMBEDDINGS] + [f"layer_{i}" for i in range(n_layers)] + [HEAD]
