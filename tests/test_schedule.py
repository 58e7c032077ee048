"""Per-group schedules: exact rates per step, warm-up keeping LLRD ratios, the SWA switch."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from ftsweep.errors import ConfigError
from ftsweep.train.schedule import LrSchedule, StepPlan, plan_steps

PEAKS = [1e-6, 2e-6, 4e-6]


def _cfg(name="linear", warmup_steps=None, warmup_ratio=None, swa=False, swa_lr=None, lr_scale=None,
         start_epoch=3, anneal_steps=10, epochs=5, max_steps=None):
    return OmegaConf.create({
        "trainer": {"epochs": epochs, "max_steps": max_steps},
        "scheduler": {"name": name, "warmup_steps": warmup_steps, "warmup_ratio": warmup_ratio},
        "swa": {"enabled": swa, "start_epoch": start_epoch, "start_fraction": None, "lr": swa_lr,
                "lr_scale": lr_scale, "anneal_steps": anneal_steps, "anneal_strategy": "cos"},
    })


def _rates(cfg, steps_per_epoch=20):
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in PEAKS])
    plan = plan_steps(cfg, steps_per_epoch)
    schedule = LrSchedule(optimizer, cfg, plan)
    out = []
    for _ in range(plan.total_steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return plan, out


def test_linear_decays_each_group_from_its_peak_to_zero():
    plan, rates = _rates(_cfg())
    assert plan.total_steps == 100
    for step in (0, 1, 37, 99):
        assert rates[step] == pytest.approx([p * (1 - step / 100) for p in PEAKS], rel=1e-12)


def test_warmup_rises_to_each_peak_and_keeps_the_ratios():
    plan, rates = _rates(_cfg(warmup_steps=50))
    assert rates[0] == [0.0, 0.0, 0.0]
    assert rates[25] == pytest.approx([p * 0.5 for p in PEAKS], rel=1e-12)
    assert rates[50] == pytest.approx(PEAKS, rel=1e-12)
    assert rates[75] == pytest.approx([p * 0.5 for p in PEAKS], rel=1e-12)
    for row in rates[1:]:
        assert row[1] / row[0] == pytest.approx(2.0) and row[2] / row[0] == pytest.approx(4.0)


def test_warmup_ratio_and_cosine_and_constant():
    plan, rates = _rates(_cfg(name="cosine", warmup_ratio=0.1))
    assert plan.warmup_steps == 10
    assert rates[55] == pytest.approx([p * 0.5 * (1 + math.cos(math.pi * 45 / 90)) for p in PEAKS], rel=1e-12)
    _, rates = _rates(_cfg(name="constant", warmup_steps=4))
    assert rates[2] == pytest.approx([p / 2 for p in PEAKS]) and rates[4] == rates[99] == pytest.approx(PEAKS)


def test_both_warmup_forms_is_an_error():
    with pytest.raises(ConfigError, match="both set"):
        plan_steps(_cfg(warmup_steps=5, warmup_ratio=0.1), 20)


def test_swa_single_rate_anneals_then_flattens_llrd():
    plan, rates = _rates(_cfg(warmup_steps=50, swa=True, swa_lr=2e-6))
    assert plan.swa_start == 60
    linear_at_60 = [p * (1 - 10 / 50) for p in PEAKS]
    assert rates[59] == pytest.approx([p * (1 - 9 / 50) for p in PEAKS], rel=1e-12)  # linear until the switch
    assert rates[60] == pytest.approx(linear_at_60, rel=1e-12)  # the anneal starts where linear was
    alpha = (1 - math.cos(math.pi * 5 / 10)) / 2
    assert rates[65] == pytest.approx([2e-6 * alpha + lr * (1 - alpha) for lr in linear_at_60], rel=1e-9)
    for step in (70, 85, 99):
        assert rates[step] == pytest.approx([2e-6] * 3, rel=1e-12)  # one rate for every group


def test_swa_lr_scale_keeps_the_llrd_ratios():
    _, rates = _rates(_cfg(swa=True, lr_scale=0.5))
    assert rates[99] == pytest.approx([p * 0.5 for p in PEAKS], rel=1e-12)


def test_swa_must_start_inside_training():
    with pytest.raises(ConfigError, match="swa.start_epoch=5"):
        plan_steps(_cfg(swa=True, swa_lr=1e-6, start_epoch=5), 20)


def test_max_steps_caps_the_schedule():
    assert plan_steps(_cfg(max_steps=7), 20) == StepPlan(20, 7, 0, None)
