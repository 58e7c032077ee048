"""Layer discovery on every supported family, and the exact rates of adamw / LLRD / grouped LLRD."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ftsweep.errors import ConfigError, ModelError
from ftsweep.model.layers import assign_layers, num_layers
from ftsweep.model.param_groups import build_optimizer, build_param_groups, layer_rates, layer_sets
from ftsweep.model.regressor import build_regressor

from archs import ARCHS, n_layers_of, tiny_backbone

HEAD_CFG = OmegaConf.create({"type": "pooler", "dropout": 0.0, "attention_hidden": 8})
LLRD = OmegaConf.create({"name": "llrd", "lr": 3.5e-6, "layer_decay": 0.9, "head_lr": 3.6e-6, "weight_decay": 0.01,
                         "betas": [0.9, 0.999], "eps": 1e-6})
GROUPED = OmegaConf.create({"name": "grouped_llrd", "n_groups": 3, "group_lrs": [1e-6, 1.75e-6, 3.5e-6],
                            "head_lr": 3.6e-6, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-6})
ADAMW = OmegaConf.create({"name": "adamw", "lr": 1e-6, "head_lr": 1e-6, "weight_decay": 0.01,
                          "betas": [0.9, 0.999], "eps": 1e-6})


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("head", ["pooler", "mean", "attention"])
def test_every_parameter_lands_in_exactly_one_group(arch, head):
    model = build_regressor(tiny_backbone(arch), OmegaConf.merge(HEAD_CFG, {"type": head}))
    assignment = assign_layers(model)
    assert num_layers(assignment) == n_layers_of(arch)
    groups = build_param_groups(model, LLRD)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    # the encoder layers are where their names say
    for name, layer in assignment.items():
        if layer.startswith("layer_"):
            assert f".{layer.split('_')[1]}." in name
    assert assignment["regressor.weight"] == "head"
    # no weight decay on biases and norm weights, decay on matrices
    for g in groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] > 0) for p in g["params"])


def test_llrd_rates_match_the_reference_numbers():
    rates = layer_rates(LLRD, 12)
    for k in range(12):
        assert rates[f"layer_{k}"] == pytest.approx(3.5e-6 * 0.9 ** (11 - k), rel=1e-12)
    assert rates["embeddings"] == pytest.approx(3.5e-6 * 0.9**12, rel=1e-12)
    assert rates["embeddings"] == pytest.approx(0.9885e-6, rel=1e-3)
    assert rates["head"] == 3.6e-6


def test_grouped_llrd_rates_match_the_reference_numbers():
    rates = layer_rates(GROUPED, 12)
    assert layer_sets(12, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert {rates["embeddings"], *(rates[f"layer_{k}"] for k in range(4))} == {1e-6}
    assert {rates[f"layer_{k}"] for k in range(4, 8)} == {1.75e-6}
    assert {rates[f"layer_{k}"] for k in range(8, 12)} == {3.5e-6}
    assert rates["head"] == 3.6e-6


def test_adamw_is_one_rate_everywhere():
    assert set(layer_rates(ADAMW, 12).values()) == {1e-6}


def test_optimizer_groups_carry_their_layer_rates():
    model = build_regressor(tiny_backbone("bert"), HEAD_CFG)
    optimizer = build_optimizer(model, LLRD, torch.device("cpu"))
    by_layer = {g["layer"]: g["lr"] for g in optimizer.param_groups}
    assert by_layer["layer_2"] == 3.5e-6 and by_layer["layer_0"] == pytest.approx(3.5e-6 * 0.81)
    assert by_layer["embeddings"] == pytest.approx(3.5e-6 * 0.9**3) and by_layer["head"] == 3.6e-6


def test_too_many_groups_is_a_clear_error():
    with pytest.raises(ConfigError, match="n_groups=4 must be between 1 and the model's 3 layers"):
        layer_rates(OmegaConf.merge(GROUPED, {"n_groups": 4, "group_lrs": [1, 2, 3, 4]}), 3)


def test_unknown_architecture_is_a_clear_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 4})()
            self.mystery = nn.Linear(4, 4)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Odd()

    with pytest.raises(ModelError, match="cannot tell which layer.*'mystery.weight'"):
        assign_layers(Wrapper())
