"""K-fold cross-validation of one composed config, tracked as one MLflow parent run.

validate -> data -> folds -> tokenise once -> per fold: model, re-init, optimizer,
fit, log -> aggregate. Returns the mean CV RMSE (what sweepers optimise).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from ftsweep import plots
from ftsweep.batching import encode, steps_per_epoch
from ftsweep.checkpoints import MODEL_FOLDER, checkpoint_name, save_state
from ftsweep.config import check_structure, validate
from ftsweep.data import ID, TARGET, TEXT, fingerprint, load_frame, resolve_path
from ftsweep.describe import run_description
from ftsweep.devices import resolve_device
from ftsweep.export import log_cv_model
from ftsweep.folds import assign_folds
from ftsweep.lease import HEARTBEAT_TAG, Heartbeat
from ftsweep.model import build_regressor, known_architecture, load_backbone, load_tokenizer, token_limit
from ftsweep.param_groups import build_optimizer
from ftsweep.progress import Progress
from ftsweep.pruning import FoldReport
from ftsweep.reinit import reinit_top_layers
from ftsweep.schedule import plan_steps
from ftsweep.speed import prepare_model
from ftsweep.sweep import DEFAULT_EXPERIMENT, row_label
from ftsweep.tracking import (
    PRUNED_TAG,
    FoldSink,
    PreviousRun,
    Tracker,
    config_key,
    flatten,
    git_commit,
    row_key,
    setup_key,
    source_tags,
)
from ftsweep.trainer import FoldResult, fit_fold, rmse
from ftsweep.units import Claim, claim, close_abandoned, inspect

log = logging.getLogger("ftsweep")
DIGEST_CHARS = 16  # the MLflow dataset digest: the data fingerprint's first hex digits
PREDICTIONS = "predictions.csv"  # each fold run's validation predictions (resume rebuilds OOF from them)


@dataclass
class CvResult:
    parent_run_id: str | None
    folds: dict[int, FoldResult] = field(default_factory=dict)
    rmse_oof: float = float("nan")
    tracking_uri: str = ""
    link: str = ""  # the experiment's runs in the MLflow UI
    held_by: str | None = None  # another live process is running this unit: nothing was run here
    pruned_at: int | None = None  # a search's pruner stopped the run after this fold

    def mean(self, attr: str = "rmse_best") -> float:
        return float(np.mean([getattr(r, attr) for r in self.folds.values()])) if self.folds else float("nan")

    def std(self, attr: str = "rmse_best") -> float:
        return float(np.std([getattr(r, attr) for r in self.folds.values()])) if self.folds else float("nan")


def folds_to_run(cfg: DictConfig) -> list[int]:
    return list(cfg.cv.folds) if cfg.cv.get("folds") is not None else list(range(int(cfg.cv.n_folds)))


def load_data(cfg: DictConfig) -> tuple[Path, pd.DataFrame]:
    """The checked rows and their folds; warm-up and SWA start checked against each fold's steps."""
    path = resolve_path(cfg.data, cfg.paths.output_root)
    frame = load_frame(cfg.data, path, int(cfg.cv.n_folds))
    frame["fold"] = assign_folds(frame[TARGET].to_numpy(), int(cfg.cv.n_folds), int(cfg.cv.fold_seed), cfg.cv.get("n_bins"))
    for fold in folds_to_run(cfg):
        plan_steps(cfg, steps_per_epoch(int((frame["fold"] != fold).sum()), int(cfg.trainer.batch_size)))
    return path, frame


def check_config(cfg: DictConfig) -> None:
    """Every setting, against the model's depth and token limit where they are known (ConfigError)."""
    check_structure(cfg)
    arch = known_architecture(cfg.model)
    validate(cfg, getattr(arch, "num_hidden_layers", None), token_limit(arch) if arch is not None else None)


def run_cv(cfg: DictConfig, overrides: list[str] | None = None, use_bar: bool = False, resume: bool = False,
           tags: dict[str, str] | None = None, after_fold: FoldReport | None = None) -> CvResult:
    """Cross-validate `cfg`. With `resume`, folds that already FINISHED for the same config, data
    and seed in this experiment are reused, not rerun; a finished config returns at once; a config
    that another live process is running is left to it. `after_fold` (a search's pruner) sees the
    running mean RMSE after each fold; when it says stop, the parent ends KILLED, tagged
    ftsweep.pruned=<fold>, with the finished folds kept."""
    overrides = overrides or []
    check_config(cfg)
    device, autocast_dtype = resolve_device(cfg.trainer)
    path, frame = load_data(cfg)  # bad data stops here, before any store or run exists
    data_fp = fingerprint(frame)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment or DEFAULT_EXPERIMENT)
    key, folds = config_key(cfg, data_fp), folds_to_run(cfg)
    if resume:
        early = _before_loading(tracker, cfg, key, folds, data_fp)
        if early is not None:
            return early
    tokenizer = load_tokenizer(cfg.model)
    encoded = encode(frame[TEXT].tolist(), tokenizer, int(cfg.trainer.max_length))
    log.info("data: %s, %d rows (fingerprint %s), %d folds; %d text(s) longer than trainer.max_length=%d were "
             "truncated", path, len(frame), data_fp[:12], cfg.cv.n_folds, encoded.n_truncated, cfg.trainer.max_length)
    torch.manual_seed(int(cfg.trainer.seed))  # a random-init backbone (source=config) must not depend on job order
    base_backbone = load_backbone(cfg.model)
    targets = frame[TARGET].to_numpy(dtype=np.float64)

    label = row_label(cfg, overrides)
    tags = {**(tags or {}), "ftsweep.config_key": key, "ftsweep.row_key": row_key(cfg, data_fp),
            "ftsweep.setup_key": setup_key(cfg), "ftsweep.data_fingerprint": data_fp, "ftsweep.label": label,
            "ftsweep.overrides": " ".join(overrides), "ftsweep.device": str(device),
            "ftsweep.seed": str(cfg.trainer.seed), "ftsweep.git_commit": git_commit() or "unknown", **source_tags()}
    unit = claim(tracker, key, folds, label, {**tags, "mlflow.note.content": run_description(cfg, label, overrides)},
                 resume)
    if unit.state != "run":  # taken or finished between the first look and the claim
        return _unclaimed(tracker, unit, folds)
    parent = unit.parent_id
    done = unit.previous.finished_folds if unit.previous else {}
    if unit.created:
        log.info("MLflow run %s in experiment %r at %s", parent, tracker.experiment_name, tracker.uri)
    else:
        log.info("resuming MLflow run %s: folds %s already finished", parent, sorted(f for f in done if f in folds))
    result = CvResult(parent, tracking_uri=tracker.uri, link=tracker.runs_link())
    inputs = FoldInputs(cfg, frame, encoded, targets, base_backbone, device, autocast_dtype, tracker, parent, use_bar,
                        label)
    open_runs = [parent]
    try:
        with Heartbeat(lambda: tracker.set_tags(parent, {HEARTBEAT_TAG: f"{time.time():.0f}"})):
            if unit.created:
                tracker.log_params(parent, flatten(cfg))
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                    frame[[ID, "fold", TARGET]].to_csv(Path(tmp) / "folds.csv", index=False)
                    tracker.log_artifact(parent, Path(tmp) / "config.yaml")
                    tracker.log_artifact(parent, Path(tmp) / "folds.csv")
                tracker.log_dataset(parent, frame[[ID, TEXT, TARGET]], str(path), data_fp[:DIGEST_CHARS],
                                    name=path.stem, targets=TARGET)
            fold_runs: dict[int, str] = {}  # fold -> the run that holds its result (and weights)
            for position, fold in enumerate(folds):
                stored = _stored_fold(tracker, done[fold], frame, fold) if fold in done else None
                if stored is not None:
                    result.folds[fold], fold_runs[fold] = stored, done[fold].info.run_id
                else:
                    child = tracker.start_run(f"fold {fold}", dict(tags, **{"ftsweep.fold": str(fold)}),
                                              parent_id=parent)
                    open_runs.append(child)
                    tracker.log_params(child, {"fold": str(fold), "seed": str(int(cfg.trainer.seed) + fold)})
                    result.folds[fold] = _run_fold(inputs, fold, child)
                    tracker.finish(child, "FINISHED")
                    open_runs.remove(child)
                    fold_runs[fold] = child
                stop = after_fold is not None and after_fold(position, result.mean("rmse_best"))
                if stop and position < len(folds) - 1:
                    result.pruned_at = fold
                    _end_pruned(tracker, parent, result)
                    open_runs.remove(parent)
                    return result
            result.rmse_oof = _log_summary(tracker, parent, frame, result)
            if cfg.trainer.save_models:
                log_cv_model(tracker, parent, cfg, fold_runs, base_backbone.config, tokenizer, frame[TEXT].tolist())
            if not unit.created:  # a resumed run that a pruner had stopped is whole now
                tracker.delete_tag(parent, PRUNED_TAG)
            tracker.finish(parent, "FINISHED")
            open_runs.remove(parent)
    except KeyboardInterrupt:
        _close(tracker, open_runs, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as exc:
        _close(tracker, open_runs, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    return result


def _end_pruned(tracker: Tracker, parent: str, result: CvResult) -> None:
    """A pruned run keeps its folds but no rmse_mean: a mean of the first folds is not comparable
    with a full CV mean (and would sort to the top of the MLflow UI)."""
    log.info("pruned after fold %d: running mean RMSE %.4f over %d fold(s) cannot win this search",
             result.pruned_at, result.mean("rmse_best"), len(result.folds))
    tracker.log_values(parent, {"rmse_running_mean": result.mean("rmse_best"), "n_folds_run": len(result.folds)})
    tracker.set_tags(parent, {PRUNED_TAG: str(result.pruned_at)})
    tracker.finish(parent, "KILLED")


def _close(tracker: Tracker, run_ids: list[str], status: str, reason: str) -> None:
    """Mark the open runs; a store that fails now too (disk full, server gone) must not hide the
    original error, and the lease lapses so a rerun takes the unit over."""
    for run_id in reversed(run_ids):
        try:
            tracker.finish(run_id, status, reason)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not mark run %s %s: %s", run_id, status, str(exc).splitlines()[0][:200])


def _before_loading(tracker: Tracker, cfg: DictConfig, key: str, folds: list[int], data_fp: str) -> CvResult | None:
    """Resume: a finished or held unit returns before any weights load; new data is said once."""
    unit = inspect(tracker, key, folds)
    if unit.state != "run":
        return _unclaimed(tracker, unit, folds)
    if unit.previous is None:
        other_data = [r for r in tracker.runs_tagged("ftsweep.setup_key", setup_key(cfg))
                      if r.data.tags.get("ftsweep.data_fingerprint") not in (None, data_fp)]
        close_abandoned(tracker, other_data)  # a run killed before the data changed is never resumed
        older = [r for r in other_data if "ftsweep.fold" not in r.data.tags]
        if older:
            was = older[0].data.tags["ftsweep.data_fingerprint"]
            log.warning("the data changed since run %s (rows fingerprint %s -> %s): starting fresh, nothing reused",
                        older[0].info.run_id, was[:12], data_fp[:12])
    return None


def _unclaimed(tracker: Tracker, unit: Claim, folds: list[int]) -> CvResult:
    if unit.state == "finished":
        log.info("already finished in run %s: nothing to do (tracking.resume=false runs it again)", unit.parent_id)
        return _stored_result(tracker, unit.previous, folds)
    log.warning("skipped: run %s of this config is being run by a live process (%s); rerun this command "
                "when it has finished to collect its result", unit.parent_id, unit.holder)
    return CvResult(unit.parent_id, tracking_uri=tracker.uri, link=tracker.runs_link(), held_by=unit.holder)


@dataclass
class FoldInputs:
    """What every fold of one CV run shares."""

    cfg: DictConfig
    frame: pd.DataFrame
    encoded: object  # batching.Encoded
    targets: np.ndarray
    base_backbone: torch.nn.Module
    device: torch.device
    autocast_dtype: torch.dtype | None
    tracker: Tracker
    parent: str
    use_bar: bool
    label: str


def _run_fold(inputs: FoldInputs, fold: int, child: str) -> FoldResult:
    cfg, frame, encoded, targets, device, tracker = (inputs.cfg, inputs.frame, inputs.encoded, inputs.targets,
                                                     inputs.device, inputs.tracker)
    autocast_dtype = inputs.autocast_dtype
    seed = int(cfg.trainer.seed) + fold
    torch.manual_seed(seed)
    train_rows = np.flatnonzero(frame["fold"].to_numpy() != fold)
    val_rows = np.flatnonzero(frame["fold"].to_numpy() == fold)
    model = build_regressor(copy.deepcopy(inputs.base_backbone), cfg.head)
    reinit_top_layers(model, int(cfg.reinit.n), bool(cfg.reinit.pooler))
    if cfg.head.init_bias_to_target_mean:
        torch.nn.init.constant_(model.regressor.bias, float(targets[train_rows].mean()))
    model.to(device)
    prepare_model(model, cfg.trainer)  # gradient checkpointing, torch.compile (opt-in)
    optimizer = build_optimizer(model, cfg.optimizer, device)
    plan = plan_steps(cfg, steps_per_epoch(len(train_rows), int(cfg.trainer.batch_size)))
    sink = FoldSink(tracker, child, log_lr=bool(cfg.tracking.log_lr))
    progress = Progress(fold, plan.total_steps, inputs.use_bar)
    try:
        res = fit_fold(model, optimizer, plan, cfg, encoded, train_rows, val_rows, targets, device, autocast_dtype,
                       seed, sink, progress, keep_best_state=bool(cfg.trainer.save_models))
    finally:
        progress.close()
        sink.flush()  # whatever was measured before a failure stays logged
    values = {"rmse_best": res.rmse_best, "rmse_last": res.rmse_last, "best_step": res.best_step,
              "steps": res.steps, "evaluations": res.evaluations, "fold_seconds": res.seconds}
    if res.rmse_swa is not None:
        values["rmse_swa"] = res.rmse_swa
    tracker.log_values(child, values)
    res.val_rows = val_rows
    with tempfile.TemporaryDirectory() as tmp:
        png = plots.lr_curves(sink.lr_history(), Path(tmp) / f"lr_curves_fold{fold}.png",
                              title=f"{inputs.label}: learning rate per layer, fold {fold}")
        tracker.log_artifact(child, png)
        # every layer in one chart on the parent too (MLflow's UI draws one chart per lr/<layer>)
        tracker.log_artifact(inputs.parent, png.rename(png.with_name("lr_curves.png")))
        _fold_predictions(frame, res).to_csv(Path(tmp) / PREDICTIONS, index=False)
        tracker.log_artifact(child, Path(tmp) / PREDICTIONS)
        if cfg.trainer.save_models:  # the best checkpoint's weights: what rmse_best scored
            path = save_state(res.best_state, Path(tmp) / checkpoint_name(fold))
            tracker.log_artifact(child, path, MODEL_FOLDER)
    res.best_state = None
    log.info("fold %d: rmse best %.4f  last %.4f  (%d steps, %.1fs)", fold, res.rmse_best, res.rmse_last,
             res.steps, res.seconds)
    return res


def _fold_predictions(frame: pd.DataFrame, res: FoldResult) -> pd.DataFrame:
    out = frame.loc[res.val_rows, [ID, "fold", TARGET]].copy()
    out["pred_best"], out["pred_last"] = res.pred_best, res.pred_last
    return out


def _stored_fold(tracker: Tracker, run, frame: pd.DataFrame | None, fold: int | None = None) -> FoldResult | None:
    """A fold that finished in an earlier attempt, read back from MLflow. With `frame`: None when
    its validation rows are not this fold's rows (then the fold is trained again, never mixed in)."""
    m = run.data.metrics
    res = FoldResult(rmse_best=m["rmse_best"], rmse_last=m["rmse_last"], rmse_swa=m.get("rmse_swa"),
                     pred_best=np.array([]), pred_last=np.array([]), best_step=int(m.get("best_step", -1)),
                     steps=int(m.get("steps", 0)), evaluations=int(m.get("evaluations", 0)),
                     seconds=float(m.get("fold_seconds", 0.0)))
    if frame is not None:
        with tempfile.TemporaryDirectory() as tmp:
            preds = pd.read_csv(tracker.download(run.info.run_id, PREDICTIONS, Path(tmp)), dtype={ID: str})
        expected = frame.loc[frame["fold"] == fold, ID]
        if len(preds) != len(expected) or set(preds[ID]) != set(expected):
            log.warning("fold %s of run %s scored other rows than this fold holds: training it again", fold,
                        run.info.run_id)
            return None
        rows = pd.Series(np.arange(len(frame)), index=frame[ID]).loc[preds[ID]].to_numpy()
        res.val_rows, res.pred_best, res.pred_last = rows, preds["pred_best"].to_numpy(), preds["pred_last"].to_numpy()
    return res


def _stored_result(tracker: Tracker, previous: PreviousRun, folds: list[int]) -> CvResult:
    result = CvResult(previous.parent_id, tracking_uri=tracker.uri, link=tracker.runs_link())
    result.folds = {f: _stored_fold(tracker, previous.finished_folds[f], None) for f in folds}
    parent = tracker.client.get_run(previous.parent_id)
    result.rmse_oof = parent.data.metrics.get("rmse_oof", float("nan"))
    return result


def _log_summary(tracker: Tracker, parent: str, frame: pd.DataFrame, result: CvResult) -> float:
    scored = pd.concat([_fold_predictions(frame, r) for r in result.folds.values()]).sort_index()
    rmse_oof = rmse(scored["pred_best"].to_numpy(), scored[TARGET].to_numpy())
    tracker.log_values(parent, {
        "rmse_mean": result.mean("rmse_best"), "rmse_std": result.std("rmse_best"),
        "rmse_last_mean": result.mean("rmse_last"), "rmse_last_std": result.std("rmse_last"),
        "rmse_oof": rmse_oof, "rmse_oof_last": rmse(scored["pred_last"].to_numpy(), scored[TARGET].to_numpy()),
        "n_folds_run": len(result.folds),
    })
    with tempfile.TemporaryDirectory() as tmp:
        scored.to_csv(Path(tmp) / "oof.csv", index=False)
        tracker.log_artifact(parent, Path(tmp) / "oof.csv")
    return rmse_oof
