"""Re-init touches exactly the top n layers (and the pooler when asked); the rest is bit-identical."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ftsweep.errors import ConfigError
from ftsweep.model.layers import assign_layers
from ftsweep.model.regressor import build_regressor
from ftsweep.model.reinit import reinit_top_layers

from archs import tiny_backbone

HEAD = OmegaConf.create({"type": "pooler", "dropout": 0.0})


def _model(arch="bert"):
    torch.manual_seed(0)
    model = build_regressor(tiny_backbone(arch), HEAD)
    with torch.no_grad():  # make every weight "pre-trained-looking", so a reset is visible
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


@pytest.mark.parametrize(("n", "pooler"), [(0, False), (1, False), (2, True), (3, True)])
def test_exactly_the_top_n_layers_change(n, pooler):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset = set(reinit_top_layers(model, n, pooler))
    layers = assign_layers(model)
    top = {f"layer_{k}" for k in range(3 - n, 3)}
    for name, param in model.named_parameters():
        should_change = layers[name] in top or (pooler and name.startswith("backbone.pooler."))
        assert (name in reset) == should_change, name
        assert torch.equal(param, before[name]) != should_change, name
        if should_change and name.endswith("LayerNorm.weight"):
            assert torch.equal(param, torch.ones_like(param))
        elif should_change and name.endswith("bias"):
            assert torch.equal(param, torch.zeros_like(param))
    assert ("regressor.weight" in reset) is False


def test_reset_matrices_follow_the_initializer_range():
    backbone = tiny_backbone("bert")
    backbone.config.initializer_range = 0.5  # big enough to measure on a 16x16 matrix
    model = build_regressor(backbone, HEAD)
    reinit_top_layers(model, 3, False)
    weights = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("dense.weight") and "layer" in n])
    assert weights.std().item() == pytest.approx(0.5, rel=0.1)
    assert abs(weights.mean().item()) < 0.05


def test_deeper_than_the_model_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"reinit.n=4 but the model has 3 encoder layers; use 0..3"):
        reinit_top_layers(_model(), 4, False)


@pytest.mark.parametrize("arch", ["roberta", "deberta-v2", "electra", "distilbert"])
def test_other_families_reset_only_the_top_layer(arch):
    model = _model(arch)
    before = {k: v.clone() for k, v in model.named_parameters()}
    reinit_top_layers(model, 1, False)
    layers = assign_layers(model)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (layers[name] != "layer_2"), name
