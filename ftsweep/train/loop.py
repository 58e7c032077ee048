"""One fold of fine-tuning in plain PyTorch: steps, evaluation cadence, best state, SWA.

Knows nothing of Hydra or MLflow: metrics go to a `MetricSink` (the CV run's is
tracking.sink.FoldSink), progress to a `ProgressReporter`, and the time of each phase
(batching, forward/backward, optimizer, evaluation, host syncs, logging) to the runtime's
`PhaseTimer` (a profiler's is train.phases.PhaseClock); all default to no-ops.
Host syncs happen only at flush points (evaluations and every FLUSH_EVERY steps),
never per step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ftsweep.data.batching import Encoded, pad_batch, steps_per_epoch, train_batches
from ftsweep.data.loading import rescale_hint
from ftsweep.errors import TrainingError
from ftsweep.model.inference import predict
from ftsweep.model.param_groups import group_layers
from ftsweep.train.schedule import LrSchedule, plan_steps
from ftsweep.train.swa import WeightAverager

FLUSH_EVERY = 25


@dataclass(frozen=True)
class FoldSplit:
    """The data of one fold: every row encoded once, their targets, and which rows train / validate."""

    encoded: Encoded
    targets: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray


class PhaseTimer(Protocol):
    """Times named phases of a fold; `with timer.phase("optimizer"): ...`. Phases may nest."""

    def phase(self, name: str) -> contextlib.AbstractContextManager: ...


class NullPhases:
    """Times nothing: one shared no-op context, so an untimed step pays ~1 µs in all."""

    _none = contextlib.nullcontext()

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        return self._none


@dataclass(frozen=True)
class Runtime:
    """Where and how a fold runs: device, autocast dtype (None: fp32), the fold's seed, and what
    times its phases (a profiler's PhaseTimer; by default nothing)."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    seed: int = 0
    phases: PhaseTimer = field(default_factory=NullPhases, compare=False)


class MetricSink(Protocol):
    def log_steps(self, key: str, values: np.ndarray, first_step: int) -> None: ...

    def log_lr(self, layers: list[str], rates: np.ndarray, first_step: int) -> None: ...


class ProgressReporter(Protocol):
    def trained(self, step: int, loss: float) -> None: ...

    def evaluated(self, step: int, score: float, best: float) -> None: ...


class NullSink:
    """Measures nothing (benchmarks, tests that only want the result)."""

    def log_steps(self, key: str, values: np.ndarray, first_step: int) -> None:
        pass

    def log_lr(self, layers: list[str], rates: np.ndarray, first_step: int) -> None:
        pass


class NullProgress:
    def trained(self, step: int, loss: float) -> None:
        pass

    def evaluated(self, step: int, score: float, best: float) -> None:
        pass


@dataclass
class FoldResult:
    rmse_best: float
    rmse_last: float
    rmse_swa: float | None
    pred_best: np.ndarray
    pred_last: np.ndarray
    best_step: int
    steps: int
    evaluations: int
    seconds: float
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    val_rows: np.ndarray | None = field(default=None, repr=False)


def fold_mean(folds: dict[int, FoldResult], attr: str = "rmse_best") -> float:
    """The CV mean of one of the folds' scores (NaN for no folds)."""
    return float(np.mean([getattr(r, attr) for r in folds.values()])) if folds else float("nan")


def fold_std(folds: dict[int, FoldResult], attr: str = "rmse_best") -> float:
    """The folds' spread of one score, as the run reports it beside the mean: the sample sd (n-1), as
    the results table's (NaN for fewer than two folds)."""
    return float(np.std([getattr(r, attr) for r in folds.values()], ddof=1)) if len(folds) > 1 else float("nan")


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """RMSE over the whole fold (not an average of per-batch RMSEs)."""
    return float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - target) ** 2)))


class _Evaluator:
    """Scores the weights on the validation rows, logs and reports the score, keeps the best
    weights seen (when they are to be saved)."""

    def __init__(self, split: FoldSplit, tcfg: DictConfig, runtime: Runtime, *, keep_best_state: bool,
                 steps: _StepLog):
        self.split, self.runtime, self.steps = split, runtime, steps
        self.batch_size, self.multiple = int(tcfg.eval_batch_size), int(tcfg.pad_to_multiple_of)
        self.targets = split.targets[split.val_rows]
        self.keep_best_state = keep_best_state
        self.best = math.inf
        self.best_step = -1
        self.best_pred: np.ndarray | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.count = 0

    def __call__(self, model: nn.Module, step: int) -> np.ndarray:
        """The predictions of `model` after `step` optimizer steps (the losses up to it logged first)."""
        self.steps.flush(step)
        with self.runtime.phases.phase("evaluation"):
            pred = predict(model, self.split.encoded, self.split.val_rows, self.batch_size, self.multiple,
                           self.runtime.device, self.runtime.autocast_dtype)
            score = rmse(pred, self.targets)
            self.count += 1
            if score < self.best:
                self.best, self.best_step, self.best_pred = score, step, pred
                if self.keep_best_state:
                    self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with self.runtime.phases.phase("logging"):
            self.steps.sink.log_steps("val/rmse", np.array([score]), step)
            self.steps.progress.evaluated(step, score, self.best)
        return pred


def _eval_due(cfg: DictConfig, epoch: int, batch_in_epoch: int, last_in_epoch: bool) -> bool:
    """`batch_in_epoch` counts from 1. Frequent evaluation follows the write-up: every x-th batch
    *of each epoch*, so every epoch is validated at the same points (not a global counter that drifts)."""
    if epoch < int(cfg.eval.start_epoch):
        return False
    if cfg.eval.strategy == "frequent":
        return batch_in_epoch % int(cfg.eval.every_n_batches) == 0
    return last_in_epoch


def _backward(model: nn.Module, encoded: Encoded, rows: np.ndarray, step_rows: int, y_all: torch.Tensor,
              tcfg: DictConfig, runtime: Runtime) -> torch.Tensor:
    """Forward + backward of one micro-batch; returns its share of the step's loss (on the device).

    Squared errors are summed and divided by the rows of the whole optimizer step, so every row
    weighs the same however the step is cut: micro-batches of 4 + 3 rows give exactly the gradient
    of one batch of 7 (a mean per micro-batch would count each of the 3 rows 4/3 times as much).
    """
    device, autocast_dtype = runtime.device, runtime.autocast_dtype
    with runtime.phases.phase("batching"):
        ids, mask = pad_batch(encoded, rows, int(tcfg.pad_to_multiple_of))
        if device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()
    y = y_all[rows].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = model(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
    loss = nn.functional.mse_loss(pred.float(), y, reduction="sum") / step_rows
    loss.backward()
    return loss.detach()


def non_finite_loss(loss: float, step: int, targets: np.ndarray, step_rows: int) -> TrainingError:
    """The error for a NaN / inf loss: the target scale when a step's summed squared errors can
    overflow float32 (errors up to twice the largest |target|), else the usual suspects."""
    targets = np.asarray(targets, dtype=np.float64)
    finite = np.abs(targets[np.isfinite(targets)])
    largest = float(finite.max()) if finite.size else 0.0
    if largest > math.sqrt(float(np.finfo(np.float32).max) / step_rows) / 2:
        return TrainingError(f"the training loss became {loss} at step {step}: the targets reach |y| = {largest:.3g}, "
                             f"whose squared errors overflow float32 in a step of {step_rows} rows; "
                             f"{rescale_hint(largest)}.")
    return TrainingError(f"the training loss became {loss} at step {step}; lower the learning rate (model.lr), "
                         f"keep trainer.grad_clip on, or try trainer.precision=fp32.")


class _StepLog:
    """Each step's loss (kept on the device) and per-layer rates, handed to the sink and progress at
    flush points only: the one place the loop waits for the device."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, runtime: Runtime, *, sink: MetricSink,
                 progress: ProgressReporter, broken: Callable[[float, int], TrainingError]):
        self.sink, self.progress = sink, progress
        self.broken = broken  # (loss, step) -> the error for a non-finite loss
        self.layers = group_layers(optimizer)
        self.first_group = [next(g for g in optimizer.param_groups if g["layer"] == name) for name in self.layers]
        self.losses = torch.zeros(total_steps, device=runtime.device)
        self.lr_rows: list[list[float]] = []
        self.flushed = 0
        self.phases = runtime.phases

    def rates(self) -> None:
        """The rates this step trains with (read before the scheduler moves them)."""
        self.lr_rows.append([g["lr"] for g in self.first_group])

    def flush(self, upto: int) -> None:
        if upto <= self.flushed:
            return
        with self.phases.phase("host_sync"):  # waits for the GPU to finish every step queued so far
            chunk = self.losses[self.flushed:upto].cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(chunk))
        if bad.size:  # keep what was measured before it broke
            self.sink.log_steps("train/loss", chunk[: bad[0]], self.flushed)
            rates = np.asarray(self.lr_rows[: bad[0]], dtype=float).reshape(-1, len(self.layers))  # [steps, layers]
            self.sink.log_lr(self.layers, rates, self.flushed)
            raise self.broken(float(chunk[bad[0]]), self.flushed + int(bad[0]))
        with self.phases.phase("logging"):
            self.sink.log_steps("train/loss", chunk, self.flushed)
            self.sink.log_lr(self.layers, np.asarray(self.lr_rows), self.flushed)
            self.progress.trained(upto, float(chunk.mean()))
        self.flushed, self.lr_rows = upto, []


@dataclass(frozen=True)
class GradClip:
    """trainer.grad_clip: every parameter's gradient norm, taken together, clipped to max_norm."""

    params: list[nn.Parameter]
    max_norm: float

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, tcfg: DictConfig) -> GradClip | None:
        max_norm = tcfg.get("grad_clip")
        return cls([p for g in optimizer.param_groups for p in g["params"]], float(max_norm)) if max_norm else None


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LrSchedule, step: int,
                    swa_model: WeightAverager | None, clip: GradClip | None) -> WeightAverager | None:
    """Clip, step, zero; once SWA is on, fold the new weights into the average; then the schedule."""
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip.params, clip.max_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if schedule.swa_active(step):
        if swa_model is None:
            swa_model = WeightAverager(model)
        swa_model.update(model)
    schedule.step()
    return swa_model


def fit_fold(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: DictConfig, split: FoldSplit,
             runtime: Runtime, sink: MetricSink | None = None, progress: ProgressReporter | None = None) -> FoldResult:
    """Train one fold; return best / last (/ SWA) RMSE and validation predictions. The best
    weights are kept (FoldResult.best_state) when trainer.save_models is on."""
    tcfg, phases, started = cfg.trainer, runtime.phases, time.perf_counter()
    sink, progress = sink or NullSink(), progress or NullProgress()
    encoded, targets, train_rows = split.encoded, split.targets, split.train_rows
    micro, accum = int(tcfg.batch_size), int(tcfg.get("grad_accum_steps") or 1)
    plan = plan_steps(cfg, steps_per_epoch(len(train_rows), micro))
    schedule = LrSchedule(optimizer, cfg, plan)
    log = _StepLog(optimizer, plan.total_steps, runtime, sink=sink, progress=progress,
                   broken=lambda loss, at: non_finite_loss(loss, at, targets, micro * accum))
    evaluator = _Evaluator(split, tcfg, runtime, keep_best_state=bool(tcfg.get("save_models")), steps=log)
    y_all = torch.tensor(np.asarray(targets), dtype=torch.float32)
    swa_model: WeightAverager | None = None
    rng, clip = np.random.default_rng(runtime.seed), GradClip.of(optimizer, tcfg)

    def evaluate(step: int) -> np.ndarray:  # the average once SWA has begun
        return evaluator(swa_model.module if swa_model is not None else model, step)

    model.train()
    step, last_eval_step, last_pred = 0, -1, None
    for epoch in range(int(tcfg.epochs)):
        # Each optimizer step's rows are drawn as one batch of batch_size x grad_accum_steps (same order
        # as without accumulation), then run as micro-batches; the epoch's last, smaller batch steps too.
        batches = train_batches(train_rows, encoded.lengths, micro * accum, rng)
        for i, rows in enumerate(batches):
            if step >= plan.total_steps:
                break
            log.rates()
            with phases.phase("forward_backward"):
                log.losses[step] = sum(_backward(model, encoded, rows[k : k + micro], len(rows), y_all, tcfg,
                                                 runtime) for k in range(0, len(rows), micro))
            with phases.phase("optimizer"):
                swa_model = _optimizer_step(model, optimizer, schedule, step, swa_model, clip)
            step += 1
            if _eval_due(cfg, epoch, i + 1, i == len(batches) - 1 or step == plan.total_steps):
                last_pred, last_eval_step = evaluate(step), step
            elif step - log.flushed >= FLUSH_EVERY:
                log.flush(step)
        if step >= plan.total_steps:
            break
    if last_eval_step != step:
        last_pred = evaluate(step)  # the final weights are always scored once
    return _fold_result(model, evaluator, swa_model, last_pred, step, time.perf_counter() - started)


def _fold_result(model: nn.Module, evaluator: _Evaluator, swa_model: WeightAverager | None, last_pred: np.ndarray,
                 steps: int, seconds: float) -> FoldResult:
    last = rmse(last_pred, evaluator.targets)
    if swa_model is not None:
        model.load_state_dict(swa_model.module.state_dict())  # the fold's model is the average
    return FoldResult(rmse_best=evaluator.best, rmse_last=last, rmse_swa=last if swa_model is not None else None,
                      pred_best=evaluator.best_pred, pred_last=last_pred, best_step=evaluator.best_step, steps=steps,
                      evaluations=evaluator.count, seconds=seconds, best_state=evaluator.best_state)
