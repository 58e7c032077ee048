"""K-fold cross-validation of one composed config, tracked as one MLflow parent run.

validate -> data -> folds -> tokenise once -> per fold: model, re-init, optimizer,
fit, log -> aggregate. Returns the mean CV RMSE (what sweepers optimise).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ftsweep.config.checks import check_settings
from ftsweep.config.keys import check_structure
from ftsweep.cv.fold import train_fold
from ftsweep.cv.result import CvResult
from ftsweep.data.batching import Encoded, encode, steps_per_epoch
from ftsweep.data.folds import assign_folds, folds_to_run
from ftsweep.data.loading import TARGET, TEXT, CvData, fingerprint, load_frame, resolve_path
from ftsweep.model.checkpoints import checkpoint_name, save_state
from ftsweep.model.ensemble import BackboneParts
from ftsweep.model.regressor import known_architecture, load_backbone, load_tokenizer, token_limit
from ftsweep.tags import DEVICE_TAG
from ftsweep.tracking.aggregate import PREDICTIONS, Unclaimed, fold_predictions
from ftsweep.tracking.naming import DEFAULT_EXPERIMENT, row_label
from ftsweep.tracking.recorder import RunRecorder
from ftsweep.train import plots
from ftsweep.train.devices import device_name, resolve_device
from ftsweep.train.loop import FoldResult, FoldSplit, NullPhases, PhaseTimer, Runtime
from ftsweep.train.progress import Progress
from ftsweep.train.schedule import plan_steps

log = logging.getLogger("ftsweep")
# (folds finished - 1, running mean RMSE, the fold's validation predictions: id, fold, target,
# pred_best, pred_last) -> stop now?
FoldReport = Callable[[int, float, pd.DataFrame], bool]


def fold_steps(cfg: DictConfig, n_train_rows: int) -> int:
    """Optimizer steps of a fold with this many training rows (checks warm-up and SWA start against them)."""
    return plan_steps(cfg, steps_per_epoch(n_train_rows, int(cfg.trainer.batch_size))).total_steps


def load_data(cfg: DictConfig) -> CvData:
    """The checked rows and their folds; warm-up and SWA start checked against each fold's steps."""
    path = resolve_path(cfg.data, cfg.paths.output_root)
    frame = load_frame(cfg.data, path, int(cfg.cv.n_folds))
    frame["fold"] = assign_folds(frame[TARGET].to_numpy(), int(cfg.cv.n_folds), int(cfg.cv.fold_seed), cfg.cv.get("n_bins"))
    for fold in folds_to_run(cfg):
        fold_steps(cfg, int((frame["fold"] != fold).sum()))
    return CvData(path, frame, fingerprint(frame))


def check_config(cfg: DictConfig) -> None:
    """Every setting, against the model's depth and token limit where they are known (ConfigError)."""
    check_structure(cfg)
    arch = known_architecture(cfg.model)
    check_settings(cfg, getattr(arch, "num_hidden_layers", None), token_limit(arch) if arch is not None else None)


@dataclass
class Job:
    """How this CV run was launched: its overrides (the row label), whether finished folds are
    reused (`resume`; `join_fold_jobs`: only where jobs of their own ran folds of this config, as
    tracking.resume=auto does in a single run), extra tags, a live progress bar, a search's pruner
    (None: every fold runs), and what times each fold's phases (a profiler's PhaseTimer, e.g. the
    GPU check's; None: nothing)."""

    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    join_fold_jobs: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    use_bar: bool = False
    after_fold: FoldReport | None = None
    phases: PhaseTimer | None = None


def run_cv(cfg: DictConfig, job: Job | None = None) -> CvResult:
    """Cross-validate `cfg` (its cv.folds: the folds this job runs). With `job.resume`, folds that
    already FINISHED for the same config, data and seed in this experiment are reused, not rerun
    (trained by another job too); a finished config returns at once; folds another live process is
    training are left to it. The job that finishes a config's last fold writes the CV over all of
    them. `job.after_fold` (a search's pruner) sees the running mean RMSE and the fold's predictions
    after each fold; when it says stop, the parent ends KILLED, tagged ftsweep.pruned=<fold>, with
    the finished folds kept."""
    job = job or Job()
    check_config(cfg)
    device, autocast_dtype = resolve_device(cfg.trainer)
    data = load_data(cfg)  # bad data stops here, before any store or run exists
    folds = folds_to_run(cfg)
    recorder = RunRecorder(cfg, data, folds, cfg.tracking.experiment or DEFAULT_EXPERIMENT)
    resume = job.resume or (job.join_fold_jobs and recorder.fold_jobs_ran())
    if resume and (early := recorder.look()) is not None:
        return _not_run(recorder, early)
    tokenizer = load_tokenizer(cfg.model)
    encoded = encode(data.frame[TEXT].tolist(), tokenizer, int(cfg.trainer.max_length))
    log.info("data: %s, %d rows (fingerprint %s), %d folds; %d text(s) longer than trainer.max_length=%d were "
             "truncated", data.path, len(data.frame), data.fingerprint[:12], cfg.cv.n_folds, encoded.n_truncated,
             cfg.trainer.max_length)
    torch.manual_seed(int(cfg.trainer.seed))  # a random-init backbone (source=config) must not depend on job order
    backbone = load_backbone(cfg.model)
    label = row_label(cfg, job.overrides)
    early = recorder.claim(label, job.overrides, {**job.tags, DEVICE_TAG: device_name(device)}, resume)
    if early is not None:
        return _not_run(recorder, early)
    parts = BackboneParts(backbone.config, tokenizer) if cfg.trainer.save_models else None
    return _run_folds(recorder, job, encoded, (backbone, parts), label, (device, autocast_dtype))


def _run_folds(recorder: RunRecorder, job: Job, encoded: Encoded, model: tuple[torch.nn.Module, BackboneParts | None],
               label: str, on: tuple[torch.device, torch.dtype | None]) -> CvResult:
    """The claimed unit's folds: each one reused, left to the live job that trains it, or trained
    here; then the unit settled (RunRecorder.finish; `parts`: the fold weights become one model)."""
    cfg, frame, folds = recorder.cfg, recorder.data.frame, recorder.folds
    backbone, parts = model
    result = CvResult(recorder.parent, tracking_uri=recorder.tracking_uri, link=recorder.runs_link())
    fold_runs: dict[int, str] = {}  # fold -> the run that holds its result (and weights)
    targets = frame[TARGET].to_numpy(dtype=np.float64)
    with recorder.recording():
        for position, fold in enumerate(folds):
            taken = recorder.take_fold(fold)
            if taken.held_by is not None:  # a live job trains it
                continue
            stored = taken.stored
            if stored is None:
                split = fold_split(frame, encoded, targets, fold)
                runtime = Runtime(*on, int(cfg.trainer.seed) + fold, job.phases or NullPhases())
                task = FoldTask(fold, taken.run_id, label, job.use_bar)
                stored = _train_and_record(recorder, task, split, runtime, backbone)
            result.folds[fold], fold_runs[fold] = stored
            stop = job.after_fold is not None and job.after_fold(
                len(result.folds) - 1, result.mean("rmse_best"), fold_predictions(frame, result.folds[fold]))
            if stop and position < len(folds) - 1:
                result.pruned_at = fold
                recorder.pruned(result.folds, fold)
                return result
        result.closed(recorder.finish(result.folds, fold_runs, parts))
    return result


def _not_run(recorder: RunRecorder, unit: Unclaimed) -> CvResult:
    return CvResult.unclaimed(unit, recorder.tracking_uri, recorder.runs_link())


def fold_split(frame: pd.DataFrame, encoded: Encoded, targets: np.ndarray, fold: int) -> FoldSplit:
    column = frame["fold"].to_numpy()
    return FoldSplit(encoded, targets, np.flatnonzero(column != fold), np.flatnonzero(column == fold))


@dataclass(frozen=True)
class FoldTask:
    """A fold this job trains: its number, the fold run claimed for it, the config's row label, progress bar or not."""

    fold: int
    run_id: str
    label: str
    use_bar: bool


def _train_and_record(recorder: RunRecorder, task: FoldTask, split: FoldSplit, runtime: Runtime,
                      backbone: torch.nn.Module) -> tuple[FoldResult, str]:
    """Train one fold inside its MLflow run; the run gets its values, LR figure, predictions and weights."""
    cfg, fold, label, use_bar = recorder.cfg, task.fold, task.label, task.use_bar
    progress = Progress(fold, fold_steps(cfg, len(split.train_rows)), use_bar)
    with tempfile.TemporaryDirectory() as tmp, recorder.fold(fold, task.run_id) as run:
        try:
            res = train_fold(cfg, backbone, split, runtime, run.sink, progress)
        finally:
            progress.close()
        res.val_rows = split.val_rows
        recorder.log_fold_values(run, res)
        png = plots.lr_curves(run.sink.lr_history(), Path(tmp) / f"lr_curves_fold{fold}.png",
                              title=f"{label}: learning rate per layer, fold {fold}")
        # every layer in one chart on the parent too (MLflow's UI draws one chart per lr/<layer>)
        run.files += [png, Path(tmp) / PREDICTIONS]
        run.parent_files.append(Path(shutil.copy(png, Path(tmp) / "lr_curves.png")))
        fold_predictions(recorder.data.frame, res).to_csv(Path(tmp) / PREDICTIONS, index=False)
        if cfg.trainer.save_models:  # the best checkpoint's weights: what rmse_best scored
            run.model_file = save_state(res.best_state, Path(tmp) / checkpoint_name(fold))
        res.best_state = None
    log.info("fold %d: rmse best %.4f  last %.4f  (%d steps, %.1fs)", fold, res.rmse_best, res.rmse_last,
             res.steps, res.seconds)
    return res, run.run_id
