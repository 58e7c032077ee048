"""Large models on modest GPUs: gradient accumulation, gradient checkpointing, the 24-layer presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftsweep.config.checks import validate
from ftsweep.cv.plan import lr_table
from ftsweep.errors import ConfigError
from ftsweep.model.speed import prepare_model
from ftsweep.train.loop import FoldSplit, Runtime, fit_fold

from helpers import compose_cfg
from test_trainer import Quiet, RecordingSink, _losses, _setup


def _trained(make_cfg, *overrides):
    cfg, model, optimizer, plan, encoded, train, val, targets = _setup(make_cfg, "trainer.epochs=1", *overrides)
    sink = RecordingSink()
    res = fit_fold(model, optimizer, cfg, FoldSplit(encoded, targets, train, val), Runtime(torch.device("cpu")), sink,
                   Quiet())
    return model, plan, sink, res


def _assert_same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_one_step_of_2x4_rows_is_one_batch_of_8(make_cfg):
    big, *_ = _trained(make_cfg, "trainer.batch_size=8", "trainer.max_steps=1")
    acc, *_ = _trained(make_cfg, "trainer.batch_size=4", "trainer.grad_accum_steps=2", "trainer.max_steps=1")
    fresh = _setup(make_cfg)[1]
    assert not torch.equal(big.regressor.weight, fresh.regressor.weight)  # the step did move the weights
    _assert_same_weights(acc, big)


def test_accumulation_with_a_short_last_step_matches_the_big_batches(make_cfg):
    # 36 rows: batches of 10, 10, 10, 6; accumulated as 5+5, 5+5, 5+5 and 5+1. Row weighting makes the
    # last step equal too (a mean per micro-batch would weigh the lone row 5x). Frequent evaluation,
    # warm-up and the plan count optimizer steps, so they line up as well.
    common = ["eval=frequent", "eval.every_n_batches=2", "scheduler.warmup_steps=2"]
    big, big_plan, big_sink, big_res = _trained(make_cfg, *common, "trainer.batch_size=10")
    acc, acc_plan, acc_sink, acc_res = _trained(make_cfg, *common, "trainer.batch_size=5", "trainer.grad_accum_steps=2")
    assert acc_plan == big_plan and acc_plan.steps_per_epoch == acc_res.steps == 4
    assert sorted(acc_sink.steps["val/rmse"]) == sorted(big_sink.steps["val/rmse"]) == [2, 4]
    assert acc_sink.lr["head"] == pytest.approx(big_sink.lr["head"])
    np.testing.assert_allclose([acc_sink.steps["train/loss"][s] for s in range(4)],
                               [big_sink.steps["train/loss"][s] for s in range(4)], rtol=1e-5)
    _assert_same_weights(acc, big)
    assert acc_res.rmse_last == pytest.approx(big_res.rmse_last, rel=1e-5)


def test_gradient_checkpointing_recomputes_and_keeps_the_loss_trajectory(make_cfg):
    cfg, model, *_ = _setup(make_cfg, "trainer.gradient_checkpointing=true")
    prepare_model(model, cfg.trainer)
    calls = []
    model.backbone.encoder.layer[0].attention.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(1000, 2000, (2, 8))
    model(ids, torch.ones_like(ids)).sum().backward()
    assert len(calls) == 2  # forward, then again in the backward pass: activations were not kept
    plain, res_plain = _losses(make_cfg, None)
    checkpointed, res_ckpt = _losses(make_cfg, None, "trainer.gradient_checkpointing=true")
    np.testing.assert_allclose(checkpointed, plain, rtol=1e-5, atol=1e-7)
    assert res_ckpt.rmse_last == pytest.approx(res_plain.rmse_last, rel=1e-5)


@pytest.mark.parametrize("preset", ["roberta_large", "deberta_v3_large"])
def test_large_presets_compose_and_plan_offline(tmp_path, preset):
    cfg = compose_cfg([f"model={preset}", "optimizer=llrd", "scheduler.warmup_steps=50", "swa=on", "swa.lr=2e-6",
                       "swa.start_epoch=3"], tmp_path)
    validate(cfg, 24, 512)
    assert (cfg.trainer.batch_size, cfg.trainer.grad_accum_steps, cfg.trainer.gradient_checkpointing) == (4, 2, True)
    table = lr_table(cfg, 640)  # 160 micro-batches of 4 = 80 optimizer steps per epoch, 5 epochs
    assert table["step"].max() == 399 and table["layer"].nunique() == 26  # embeddings, 24 layers, head
    top = table[(table["step"] == 50) & (table["layer"] == "layer_23")]["lr"].item()
    assert top == pytest.approx(cfg.optimizer.lr)
    assert set(table[table["step"] == 300]["lr"].round(12)) == {2e-6}  # SWA from step 240, annealed by 250


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.grad_accum_steps=0", "trainer.grad_accum_steps=0 must be a positive integer"),
        ("trainer.grad_accum_steps=1.5", "trainer.grad_accum_steps=1.5 must be a positive integer"),
        ("trainer.gradient_checkpointing=maybe", "trainer.gradient_checkpointing='maybe' must be true or false"),
        ("trainer.compile=fast", "trainer.compile='fast' is not one of false, true (= default), default, reduce-overhead"),
        ("trainer.compile=1", "trainer.compile=1 is not one of"),
    ],
)
def test_bad_speed_and_memory_settings_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([override], tmp_path))
    assert message in str(err.value)


def test_compile_modes_validate(tmp_path):
    for value in ("false", "true", "default", "reduce-overhead"):
        validate(compose_cfg([f"trainer.compile={value}"], tmp_path))
