"""One CV run in MLflow, from claim to close: the recorder owns every MLflow step of run_cv.

look (resume: a finished or held unit returns before any weights load) -> claim (a new
parent, or the previous one reopened) -> recording() (heartbeat; the parent's params,
config, folds and dataset; every open run closed KILLED / FAILED if anything escapes) ->
per fold: a stored result, or fold() (a nested run, its metrics sink, values and
artifacts) -> pruned() or finish() (the summary, the CV model, FINISHED).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ftsweep.data.loading import ID, TARGET, TEXT, CvData
from ftsweep.locks import Heartbeat, beat
from ftsweep.model.checkpoints import MODEL_FOLDER
from ftsweep.model.ensemble import BackboneParts
from ftsweep.tags import (
    CONFIG_KEY_TAG,
    DATA_FINGERPRINT_TAG,
    FOLD_TAG,
    GIT_COMMIT_TAG,
    HEARTBEAT_TAG,
    LABEL_TAG,
    OVERRIDES_TAG,
    PRUNED_TAG,
    ROW_KEY_TAG,
    SEED_TAG,
    SETUP_KEY_TAG,
)
from ftsweep.tracking.describe import run_description
from ftsweep.tracking.keys import config_key, flatten, fold_tags, git_commit, row_key, setup_key, source_tags
from ftsweep.tracking.model_export import log_cv_model
from ftsweep.tracking.sink import FoldSink
from ftsweep.tracking.store import PreviousRun, Tracker
from ftsweep.tracking.system_metrics import sampled
from ftsweep.tracking.units import Claim, claim, close_abandoned, inspect, release
from ftsweep.train.loop import FoldResult, fold_mean, fold_std, rmse

log = logging.getLogger("ftsweep")
DIGEST_CHARS = 16  # the MLflow dataset digest: the data fingerprint's first hex digits
PREDICTIONS = "predictions.csv"  # each fold run's validation predictions (resume rebuilds OOF from them)


@dataclass
class Unclaimed:
    """A unit this process does not run: finished earlier (its folds and OOF score read back) or held
    by another live process (who holds it)."""

    parent_id: str
    held_by: str | None = None
    folds: dict[int, FoldResult] = field(default_factory=dict)
    rmse_oof: float = float("nan")


def fold_predictions(frame: pd.DataFrame, res: FoldResult) -> pd.DataFrame:
    """A fold's validation rows with their best-checkpoint and last-weights predictions."""
    out = frame.loc[res.val_rows, [ID, "fold", TARGET]].copy()
    out["pred_best"], out["pred_last"] = res.pred_best, res.pred_last
    return out


@dataclass
class FoldRun:
    """A fold's nested MLflow run while it trains: `sink` takes the loop's step metrics."""

    run_id: str
    sink: FoldSink
    files: list[Path] = field(default_factory=list)  # artifacts to log when the fold ends
    parent_files: list[Path] = field(default_factory=list)
    model_file: Path | None = None  # the fold's weights (trainer.save_models)


class RunRecorder:
    def __init__(self, cfg: DictConfig, data: CvData, folds: list[int], experiment: str):
        """Opens (creates) the store and experiment; nothing is logged yet."""
        self.cfg, self.data, self.folds = cfg, data, folds
        self.tracker = Tracker(cfg.tracking.uri, experiment)
        self.key = config_key(cfg, data.fingerprint)
        self.parent: str | None = None
        self.created = False
        self.claim_label = ""  # server stores: the claim released when the parent run closes
        self.done: dict[int, object] = {}  # fold -> its FINISHED run from an earlier attempt
        self._open: list[str] = []

    @property
    def tracking_uri(self) -> str:
        return self.tracker.uri

    def runs_link(self) -> str:
        """The experiment's runs in the MLflow UI."""
        return self.tracker.runs_link()

    def look(self) -> Unclaimed | None:
        """Resume: a finished or held unit returns before any weights load; new data is said once."""
        unit = inspect(self.tracker, self.key, self.folds)
        if unit.state != "run":
            return self._unclaimed(unit)
        if unit.previous is None:
            fp = self.data.fingerprint
            other_data = [r for r in self.tracker.runs_tagged(SETUP_KEY_TAG, setup_key(self.cfg))
                          if r.data.tags.get(DATA_FINGERPRINT_TAG) not in (None, fp)]
            close_abandoned(self.tracker, other_data)  # a run killed before the data changed is never resumed
            older = [r for r in other_data if FOLD_TAG not in r.data.tags]
            if older:
                was = older[0].data.tags[DATA_FINGERPRINT_TAG]
                log.warning("the data changed since run %s (rows fingerprint %s -> %s): starting fresh, nothing "
                            "reused", older[0].info.run_id, was[:12], fp[:12])
        return None

    def claim(self, label: str, overrides: list[str], tags: dict[str, str], resume: bool) -> Unclaimed | None:
        """Take the unit: None when it is ours to run, else what the store already holds."""
        fp = self.data.fingerprint
        self.tags = {**tags, CONFIG_KEY_TAG: self.key, ROW_KEY_TAG: row_key(self.cfg, fp),
                     SETUP_KEY_TAG: setup_key(self.cfg), DATA_FINGERPRINT_TAG: fp, LABEL_TAG: label,
                     OVERRIDES_TAG: " ".join(overrides), SEED_TAG: str(self.cfg.trainer.seed),
                     GIT_COMMIT_TAG: git_commit() or "unknown", **source_tags()}
        note = run_description(self.cfg, label, overrides)
        unit = claim(self.tracker, self.key, self.folds, label, {**self.tags, "mlflow.note.content": note}, resume)
        if unit.state != "run":  # taken or finished between the first look and the claim
            return self._unclaimed(unit)
        self.parent, self.created, self.claim_label = unit.parent_id, unit.created, unit.label
        self.done = unit.previous.finished_folds if unit.previous else {}
        if unit.created:
            log.info("MLflow run %s in experiment %r at %s", self.parent, self.tracker.experiment_name,
                     self.tracker.uri)
        else:
            log.info("resuming MLflow run %s: folds %s already finished", self.parent,
                     sorted(f for f in self.done if f in self.folds))
        return None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """The claimed parent run while its folds run: renewed lease, and no run left RUNNING on failure."""
        parent = self.parent
        self._open = [parent]
        try:
            with Heartbeat(lambda: self.tracker.set_tags(parent, {HEARTBEAT_TAG: beat()})):
                if self.created:
                    self._log_parent()
                yield
        except KeyboardInterrupt:
            self._close("KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except BaseException as exc:
            self._close("FAILED", f"{type(exc).__name__}: {exc}")
            raise

    def _log_parent(self) -> None:
        tracker, frame, parent = self.tracker, self.data.frame, self.parent
        tracker.log_params(parent, flatten(self.cfg))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            frame[[ID, "fold", TARGET]].to_csv(Path(tmp) / "folds.csv", index=False)
            tracker.log_artifact(parent, Path(tmp) / "config.yaml")
            tracker.log_artifact(parent, Path(tmp) / "folds.csv")
        path = self.data.path
        tracker.log_dataset(parent, frame[[ID, TEXT, TARGET]], str(path), self.data.fingerprint[:DIGEST_CHARS],
                            name=path.stem, targets=TARGET)

    def stored_fold(self, fold: int) -> tuple[FoldResult, str] | None:
        """A fold that finished in an earlier attempt on these rows, and its run; None: train it."""
        if fold not in self.done:
            return None
        run = self.done[fold]
        res = _stored_fold(self.tracker, run, self.data.frame, fold)
        return (res, run.info.run_id) if res is not None else None

    @contextlib.contextmanager
    def fold(self, fold: int) -> Iterator[FoldRun]:
        """A nested run for a fold being trained. Step metrics measured before a failure stay logged;
        on success the caller's values and files are logged and the run FINISHED."""
        frame = self.data.frame
        tags = fold_tags(fold, frame.loc[frame["fold"] == fold, ID], len(frame))
        child = self.tracker.start_run(f"fold {fold}", dict(self.tags, **tags), parent_id=self.parent)
        self._open.append(child)
        self.tracker.log_params(child, {"fold": str(fold), "seed": str(int(self.cfg.trainer.seed) + fold)})
        run = FoldRun(child, FoldSink(self.tracker, child, log_lr=bool(self.cfg.tracking.log_lr)))
        try:
            with sampled(child, self.tracker.uri, self.cfg.tracking.get("system_metrics_interval")):
                yield run
        finally:
            run.sink.flush()
        for path in run.files:
            self.tracker.log_artifact(child, path)
        for path in run.parent_files:
            self.tracker.log_artifact(self.parent, path)
        if run.model_file is not None:
            self.tracker.log_artifact(child, run.model_file, MODEL_FOLDER)
        self.tracker.finish(child, "FINISHED")
        self._open.remove(child)

    def log_fold_values(self, run: FoldRun, res: FoldResult) -> None:
        values = {"rmse_best": res.rmse_best, "rmse_last": res.rmse_last, "best_step": res.best_step,
                  "steps": res.steps, "evaluations": res.evaluations, "fold_seconds": res.seconds}
        if res.rmse_swa is not None:
            values["rmse_swa"] = res.rmse_swa
        self.tracker.log_values(run.run_id, values)

    def pruned(self, folds: dict[int, FoldResult], after_fold: int) -> None:
        """A pruned run keeps its folds but no rmse_mean: a mean of the first folds is not comparable
        with a full CV mean (and would sort to the top of the MLflow UI)."""
        log.info("pruned after fold %d: running mean RMSE %.4f over %d fold(s) cannot win this search",
                 after_fold, fold_mean(folds), len(folds))
        self.tracker.log_values(self.parent, {"rmse_running_mean": fold_mean(folds), "n_folds_run": len(folds)})
        self.tracker.set_tags(self.parent, {PRUNED_TAG: str(after_fold)})
        self.tracker.finish(self.parent, "KILLED")
        self._open.remove(self.parent)
        release(self.tracker, self.claim_label)

    def finish(self, folds: dict[int, FoldResult], fold_runs: dict[int, str],
               parts: BackboneParts | None = None) -> tuple[float, str | None]:
        """The summary on the parent; with `parts` (trainer.save_models) the fold weights as one pyfunc
        model; then FINISHED. Returns the OOF RMSE and, where tracking.register_as failed, how to
        register the model later."""
        rmse_oof, registry_error = self._log_summary(folds), None
        if parts is not None:
            uri = log_cv_model(self.tracker, self.parent, self.cfg, fold_runs, parts, self.data.frame[TEXT].tolist())
            registry_error = self._register(uri)
        if not self.created:  # a resumed run that a pruner had stopped is whole now
            self.tracker.delete_tag(self.parent, PRUNED_TAG)
        self.tracker.finish(self.parent, "FINISHED")
        self._open.remove(self.parent)
        release(self.tracker, self.claim_label)
        return rmse_oof, registry_error

    def _register(self, model_uri: str) -> str | None:
        """tracking.register_as: a registry that refuses (no registry on the server, no permission) must
        not turn finished folds into a failed run; the message says how to register the model later."""
        name = self.cfg.tracking.get("register_as")
        if not name:
            return None
        try:
            version = self.tracker.register_model(model_uri, name)
        except Exception as exc:  # noqa: BLE001 (MLflow and REST errors alike)
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            later = (f"import mlflow; mlflow.set_tracking_uri({json.dumps(self.tracker.uri)}); "
                     f"mlflow.register_model({json.dumps(model_uri)}, {json.dumps(name)})")
            return (f"the CV run {self.parent} finished and is kept, but registering its model as {name!r} failed "
                    f"({reason}); register it later: python -c {shlex.quote(later)}")
        log.info("registered %s as version %s of model %r", model_uri, version, name)
        return None

    def _log_summary(self, folds: dict[int, FoldResult]) -> float:
        frame = self.data.frame
        scored = pd.concat([fold_predictions(frame, r) for r in folds.values()]).sort_index()
        rmse_oof = rmse(scored["pred_best"].to_numpy(), scored[TARGET].to_numpy())
        self.tracker.log_values(self.parent, {
            "rmse_mean": fold_mean(folds), "rmse_std": fold_std(folds),
            "rmse_last_mean": fold_mean(folds, "rmse_last"), "rmse_last_std": fold_std(folds, "rmse_last"),
            "rmse_oof": rmse_oof, "rmse_oof_last": rmse(scored["pred_last"].to_numpy(), scored[TARGET].to_numpy()),
            "n_folds_run": len(folds),
        })
        with tempfile.TemporaryDirectory() as tmp:
            scored.to_csv(Path(tmp) / "oof.csv", index=False)
            self.tracker.log_artifact(self.parent, Path(tmp) / "oof.csv")
        return rmse_oof

    def _close(self, status: str, reason: str) -> None:
        """Mark the open runs; a store that fails now too (disk full, server gone) must not hide the
        original error, and the lease lapses so a rerun takes the unit over."""
        for run_id in reversed(self._open):
            try:
                self.tracker.finish(run_id, status, reason)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not mark run %s %s (the next run against this store marks it KILLED): %s",
                            run_id, status, str(exc).splitlines()[0][:200])
        self._open = []
        release(self.tracker, self.claim_label)

    def _unclaimed(self, unit: Claim) -> Unclaimed:
        if unit.state == "finished":
            log.info("already finished in run %s: nothing to do (tracking.resume=false runs it again)", unit.parent_id)
            return self._stored_result(unit.previous)
        log.warning("skipped: run %s of this config is being run by a live process (%s); rerun this command "
                    "when it has finished to collect its result", unit.parent_id or "(not written yet)", unit.holder)
        return Unclaimed(unit.parent_id, held_by=unit.holder)

    def _stored_result(self, previous: PreviousRun) -> Unclaimed:
        return Unclaimed(previous.parent_id,
                         folds={f: _stored_fold(self.tracker, previous.finished_folds[f], None) for f in self.folds},
                         rmse_oof=self.tracker.get_run(previous.parent_id).data.metrics.get("rmse_oof", float("nan")))


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
