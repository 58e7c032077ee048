"""Tiny random-init configs of the encoder families ftsweep supports (layer discovery tests)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

COMMON = {"vocab_size": 120, "max_position_embeddings": 64}
BERTLIKE = dict(COMMON, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=3)

ARCHS = {
    "bert": ("bert", BERTLIKE),
    "minilm": ("bert", dict(BERTLIKE, num_hidden_layers=6)),  # MiniLM is a BERT-architecture model
    "roberta": ("roberta", dict(BERTLIKE, pad_token_id=1)),
    "xlm-roberta": ("xlm-roberta", dict(BERTLIKE, pad_token_id=1)),
    "electra": ("electra", dict(BERTLIKE, embedding_size=8)),
    "deberta-v2": ("deberta-v2", dict(BERTLIKE, relative_attention=True, position_buckets=8, max_relative_positions=-1,
                                      pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
                                      position_biased_input=False, type_vocab_size=0)),
    "distilbert": ("distilbert", dict(COMMON, dim=16, n_heads=2, hidden_dim=32, n_layers=3)),
}


def tiny_backbone(name: str):
    model_type, fields = ARCHS[name]
    return AutoModel.from_config(AutoConfig.for_model(model_type, **fields))


def n_layers_of(name: str) -> int:
    _, fields = ARCHS[name]
    return fields.get("num_hidden_layers", fields.get("n_layers"))
