"""The fold loop: evaluation cadence, weights that move, SWA averages, logged rates, NaN guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftsweep.data.batching import encode, steps_per_epoch
from ftsweep.data.demo import generate
from ftsweep.errors import TrainingError
from ftsweep.model.param_groups import build_optimizer
from ftsweep.model.regressor import build_regressor, load_backbone, load_tokenizer
from ftsweep.model.speed import prepare_model
from ftsweep.train.loop import FLUSH_EVERY, FoldSplit, Runtime, fit_fold, rmse
from ftsweep.train.phases import PhaseClock
from ftsweep.train.schedule import plan_steps


class RecordingSink:
    def __init__(self):
        self.steps: dict[str, dict[int, float]] = {}
        self.lr: dict[str, dict[int, float]] = {}

    def log_steps(self, key, values, first_step):
        self.steps.setdefault(key, {}).update({first_step + i: float(v) for i, v in enumerate(values)})

    def log_lr(self, layers, rates, first_step):
        for j, layer in enumerate(layers):
            self.lr.setdefault(layer, {}).update({first_step + i: float(v) for i, v in enumerate(rates[:, j])})


class Quiet:
    def trained(self, *a):
        pass

    def evaluated(self, *a):
        pass


def _setup(make_cfg, *overrides, n_rows=48):
    cfg = make_cfg("trainer.max_steps=null", *overrides)
    frame = generate(n_rows, words_per_passage=12, seed=3)
    encoded = encode(frame["excerpt"].tolist(), load_tokenizer(cfg.model), int(cfg.trainer.max_length))
    torch.manual_seed(0)
    model = build_regressor(load_backbone(cfg.model), cfg.head)
    rows = np.arange(n_rows)
    train, val = rows[: n_rows * 3 // 4], rows[n_rows * 3 // 4 :]
    optimizer = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    plan = plan_steps(cfg, steps_per_epoch(len(train), int(cfg.trainer.batch_size)))
    return cfg, model, optimizer, plan, encoded, train, val, frame["target"].to_numpy()


def _fit(cfg, model, optimizer, plan, encoded, train, val, targets, sink=None, seed=0):
    return fit_fold(model, optimizer, cfg, FoldSplit(encoded, targets, train, val), Runtime(torch.device("cpu"), None, seed),
                    sink or RecordingSink(), Quiet())


def test_epoch_evaluation_counts_and_weights_move(make_cfg):
    setup = _setup(make_cfg, "trainer.epochs=2", "trainer.batch_size=6")
    cfg, model, optimizer, plan, encoded, train, val, targets = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sink = RecordingSink()
    res = _fit(*setup, sink=sink)
    assert plan.total_steps == res.steps == 12
    assert res.evaluations == 2 and sorted(sink.steps["val/rmse"]) == [6, 12]
    assert sorted(sink.steps["train/loss"]) == list(range(12))
    assert res.rmse_best == min(sink.steps["val/rmse"].values())
    assert res.rmse_last == sink.steps["val/rmse"][12] == pytest.approx(rmse(res.pred_last, targets[val]))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "regressor.weight" in changed and any(".layer.0." in k for k in changed)


def test_frequent_evaluation_every_n_batches(make_cfg):
    setup = _setup(make_cfg, "eval=frequent", "eval.every_n_batches=4", "trainer.epochs=2", "trainer.batch_size=6")
    sink = RecordingSink()
    res = _fit(*setup, sink=sink)
    # 6 batches an epoch: batch 4 of each epoch (steps 4 and 10), counted within the epoch as the
    # write-up does, then the final weights at step 12
    assert sorted(sink.steps["val/rmse"]) == [4, 10, 12]
    assert res.evaluations == 3
    assert res.rmse_best == pytest.approx(min(sink.steps["val/rmse"].values()))
    assert res.best_step == min(sink.steps["val/rmse"], key=sink.steps["val/rmse"].get)


def test_phase_timer_sees_every_step_and_syncs_only_at_flushes(make_cfg):
    """The loop reports its phases to the runtime's PhaseTimer: each step's batching, forward/backward
    and optimizer; the host waits for the device only where it flushes (every FLUSH_EVERY steps and
    at an evaluation), never per step."""
    cfg, model, optimizer, plan, encoded, train, val, targets = _setup(make_cfg, "trainer.epochs=1",
                                                                       "trainer.batch_size=1")
    clock = PhaseClock()
    res = fit_fold(model, optimizer, cfg, FoldSplit(encoded, targets, train, val),
                   Runtime(torch.device("cpu"), None, 0, clock), RecordingSink(), Quiet())
    assert res.steps == len(train) == 36 > FLUSH_EVERY
    assert {k: clock.count[k] for k in ("batching", "forward_backward", "optimizer")} == dict.fromkeys(
        ("batching", "forward_backward", "optimizer"), 36)
    # flushed at step 25, then at the epoch's evaluation (step 36): two waits, three logging calls
    assert clock.count["host_sync"] == 2 and clock.count["evaluation"] == 1 and clock.count["logging"] == 3
    summary = clock.summary(res.seconds)
    assert 0 <= summary["outside_phases_s"] and sum(p["s"] for p in summary["phases"].values()) <= res.seconds
    assert all("device_s" not in p for p in summary["phases"].values())  # no events on a CPU


def test_logged_rates_are_the_schedule(make_cfg):
    setup = _setup(make_cfg, "optimizer=llrd", "scheduler.warmup_steps=4", "trainer.epochs=2", "trainer.batch_size=6")
    cfg = setup[0]
    sink = RecordingSink()
    _fit(*setup, sink=sink)
    top, head = cfg.optimizer.lr, cfg.optimizer.head_lr
    assert sink.lr["layer_1"][0] == 0.0 and sink.lr["layer_1"][2] == pytest.approx(top / 2)
    assert sink.lr["layer_1"][4] == pytest.approx(top) and sink.lr["head"][4] == pytest.approx(head)
    assert sink.lr["layer_0"][4] == pytest.approx(top * 0.9) and sink.lr["embeddings"][4] == pytest.approx(top * 0.81)
    assert sink.lr["layer_1"][8] == pytest.approx(top * (1 - 4 / 8))


def test_swa_weights_are_the_mean_of_the_snapshots(make_cfg):
    setup = _setup(make_cfg, "swa=on", "swa.start_epoch=1", "swa.lr=null", "swa.lr_scale=0.5",
                   "trainer.epochs=2", "trainer.batch_size=6")
    cfg, model, optimizer, plan, *_ = setup
    snapshots = []
    optimizer.register_step_post_hook(
        lambda *_: snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    )
    res = _fit(*setup)
    assert plan.swa_start == 6 and len(snapshots) == 12
    averaged = snapshots[6:]
    for name, param in model.named_parameters():
        expected = torch.stack([s[name] for s in averaged]).mean(0)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-7)
    assert res.rmse_swa == res.rmse_last


def test_non_finite_loss_stops_the_fold_with_its_step(make_cfg):
    setup = list(_setup(make_cfg))
    setup[-1] = setup[-1].copy()
    setup[-1][setup[5][3]] = np.nan  # one training target is NaN
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+"):
        _fit(*setup)


def test_a_loss_overflowed_by_the_target_scale_names_the_targets(make_cfg):
    setup = list(_setup(make_cfg, "trainer.batch_size=8"))
    setup[-1] = setup[-1] * 1e30  # loaded targets are capped at 1e18; these would blame the learning rate
    with pytest.raises(TrainingError) as err:
        _fit(*setup)
    largest = float(np.abs(setup[-1]).max())
    assert str(err.value) == (f"the training loss became inf at step 0: the targets reach |y| = {largest:.3g}, whose "
                              f"squared errors overflow float32 in a step of 8 rows; rescale the targets "
                              f"(e.g. divide them by 1e+31).")


def _losses(make_cfg, autocast_dtype, *overrides):
    cfg, model, optimizer, plan, encoded, train, val, targets = _setup(make_cfg, "trainer.epochs=3", "trainer.batch_size=6",
                                                                       *overrides)
    prepare_model(model, cfg.trainer)  # trainer.compile / gradient_checkpointing, as cv.py does
    sink = RecordingSink()
    res = fit_fold(model, optimizer, cfg, FoldSplit(encoded, targets, train, val),
                   Runtime(torch.device("cpu"), autocast_dtype, 0), sink, Quiet())
    return np.array([sink.steps["train/loss"][s] for s in sorted(sink.steps["train/loss"])]), res


def test_bf16_and_fp32_loss_trajectories_agree(make_cfg):
    fp32, res32 = _losses(make_cfg, None)
    bf16, res16 = _losses(make_cfg, torch.bfloat16)
    assert len(fp32) == len(bf16) == 18
    # bf16 keeps 8 mantissa bits: per-step losses agree to a few percent, the trajectory's shape exactly
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=0.02)
    assert abs(res16.rmse_last - res32.rmse_last) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["true", "reduce-overhead"])  # on a CPU: no CUDA graphs, dynamic shapes
def test_compiled_backbone_trains_like_eager(make_cfg, mode):
    # every text cut to 16 tokens: one training and one evaluation shape, so two compiles, not one per width
    eager, res_eager = _losses(make_cfg, None, "trainer.max_length=16")
    compiled, res_compiled = _losses(make_cfg, None, "trainer.max_length=16", f"trainer.compile={mode}")
    np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-4)
    assert res_compiled.rmse_last == pytest.approx(res_eager.rmse_last, abs=1e-3)
