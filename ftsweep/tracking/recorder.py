"""One CV run in MLflow, from claim to close: the recorder owns every MLflow step of run_cv.

look (resume: a finished or held unit returns before any weights load) -> claim (a new
parent, a live one joined, or a dead one reopened) -> recording() (heartbeat; the parent's
params, config, folds and dataset; every open run closed KILLED / FAILED if anything escapes)
-> per fold: take_fold() (a stored result, a fold a live process trains, or a new fold run)
and fold() (its metrics sink, values and artifacts) -> pruned() or finish() (the unit settled:
the CV over every fold on the parent once all have finished, else how many have).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ftsweep.data.loading import ID, TARGET, TEXT, CvData
from ftsweep.locks import Heartbeat, beat
from ftsweep.model.checkpoints import MODEL_FOLDER
from ftsweep.model.ensemble import BackboneParts
from ftsweep.tags import (
    CONFIG_KEY_TAG,
    DATA_FINGERPRINT_TAG,
    FOLD_JOBS_TAG,
    FOLD_TAG,
    FOLDS_FINISHED_TAG,
    GIT_COMMIT_TAG,
    HEARTBEAT_TAG,
    LABEL_TAG,
    OVERRIDES_TAG,
    PRUNED_TAG,
    ROW_KEY_TAG,
    SEED_TAG,
    SETUP_KEY_TAG,
)
from ftsweep.tracking.aggregate import CV_VALUES, Closing, Unclaimed, cv_values, log_cv, stored_fold
from ftsweep.tracking.describe import run_description
from ftsweep.tracking.keys import (
    config_key,
    config_overrides,
    flatten,
    fold_tags,
    git_commit,
    row_key,
    setup_key,
    source_tags,
    whole_config,
)
from ftsweep.tracking.model_export import log_cv_model, register
from ftsweep.tracking.sink import FoldSink
from ftsweep.tracking.store import Tracker
from ftsweep.tracking.system_metrics import sampled
from ftsweep.tracking.units import (
    Claim,
    PreviousRun,
    claim,
    claim_fold,
    close_abandoned,
    complete,
    find_previous,
    inspect,
    settle,
)
from ftsweep.train.loop import FoldResult, fold_mean

log = logging.getLogger("ftsweep")
DIGEST_CHARS = 16  # the MLflow dataset digest: the data fingerprint's first hex digits


@dataclass
class FoldRun:
    """A fold's nested MLflow run while it trains: `sink` takes the loop's step metrics."""

    run_id: str
    sink: FoldSink
    files: list[Path] = field(default_factory=list)  # artifacts to log when the fold ends
    parent_files: list[Path] = field(default_factory=list)
    model_file: Path | None = None  # the fold's weights (trainer.save_models)


@dataclass
class TakenFold:
    """take_fold's answer: a result stored earlier or by another job (with its run), a fold a live
    process trains (`held_by`), or a fold run of this process to train it in (`run_id`)."""

    stored: tuple[FoldResult, str] | None = None
    held_by: str | None = None
    run_id: str = ""


class RunRecorder:
    def __init__(self, cfg: DictConfig, data: CvData, folds: list[int], experiment: str):
        """Opens (creates) the store and experiment; nothing is logged yet."""
        self.cfg, self.data, self.folds = cfg, data, folds
        self.whole, self.n_folds = whole_config(cfg), int(cfg.cv.n_folds)
        self.tracker = Tracker(cfg.tracking.uri, experiment)
        self.key = config_key(cfg, data.fingerprint)
        self.parent: str | None = None
        self.created = False
        self.owner = False  # this process holds the parent run (else it joined one a live process holds)
        self.scoped = False  # tracking.resume=false: only this parent's own folds count
        self._open: list[str] = []

    @property
    def tracking_uri(self) -> str:
        return self.tracker.uri

    def runs_link(self) -> str:
        """The experiment's runs in the MLflow UI."""
        return self.tracker.runs_link()

    def fold_jobs_ran(self) -> bool:
        """Did jobs of their own (cv.folds) run folds of this config here? Then a plain run joins them."""
        previous = find_previous(self.tracker, self.key)
        return previous is not None and FOLD_JOBS_TAG in previous.parent.data.tags

    def look(self) -> Unclaimed | None:
        """Resume: a finished or held unit returns before any weights load; new data is said once."""
        unit = inspect(self.tracker, self.key, self.folds, self.n_folds)
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
        """Work in the unit: None when this process runs folds of it, else what the store already holds."""
        fp, overrides = self.data.fingerprint, config_overrides(overrides)
        self.tags = {**tags, CONFIG_KEY_TAG: self.key, ROW_KEY_TAG: row_key(self.cfg, fp),
                     SETUP_KEY_TAG: setup_key(self.cfg), DATA_FINGERPRINT_TAG: fp, LABEL_TAG: label,
                     OVERRIDES_TAG: " ".join(overrides), SEED_TAG: str(self.cfg.trainer.seed),
                     GIT_COMMIT_TAG: git_commit() or "unknown", **source_tags()}
        split = {FOLD_JOBS_TAG: "true"} if self.cfg.cv.get("folds") is not None else {}
        note = run_description(self.whole, label, overrides)
        unit = claim(self.tracker, self.key, self.folds, self.n_folds, label,
                     {**self.tags, **split, "mlflow.note.content": note}, resume)
        if unit.state != "run":  # taken or finished between the first look and the claim
            return self._unclaimed(unit)
        self.parent, self.created, self.owner, self.scoped = unit.parent_id, unit.created, unit.owner, not resume
        if split and not unit.created:
            self.tracker.set_tags(self.parent, split)
        done = sorted(f for f in (unit.previous.finished_folds if unit.previous else {}) if f in self.folds)
        if unit.created:
            log.info("MLflow run %s in experiment %r at %s", self.parent, self.tracker.experiment_name,
                     self.tracker.uri)
        else:
            log.info("%s MLflow run %s: folds %s already finished", "resuming" if unit.owner else "joining",
                     self.parent, done)
        return None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """The claimed parent run while its folds run: renewed leases (the parent this process holds,
        the fold it trains), and no run of this process left RUNNING on failure."""
        self._open = [self.parent] if self.owner else []
        try:
            with Heartbeat(self._beat):
                if self.created:
                    self._log_parent()
                yield
        except KeyboardInterrupt:
            self._close("KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except BaseException as exc:
            self._close("FAILED", f"{type(exc).__name__}: {exc}")
            raise

    def _beat(self) -> None:
        for run_id in list(self._open):
            self.tracker.set_tags(run_id, {HEARTBEAT_TAG: beat()})

    def _log_parent(self) -> None:
        tracker, frame, parent = self.tracker, self.data.frame, self.parent
        tracker.log_params(parent, flatten(self.whole))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(self.whole, resolve=True))
            frame[[ID, "fold", TARGET]].to_csv(Path(tmp) / "folds.csv", index=False)
            tracker.log_artifact(parent, Path(tmp) / "config.yaml")
            tracker.log_artifact(parent, Path(tmp) / "folds.csv")
        path = self.data.path
        tracker.log_dataset(parent, frame[[ID, TEXT, TARGET]], str(path), self.data.fingerprint[:DIGEST_CHARS],
                            name=path.stem, targets=TARGET)

    def take_fold(self, fold: int) -> TakenFold:
        """Claim a fold: finished already (in an earlier attempt or by another job: read back), trained
        by a live process now (left to it), or a new fold run of this process."""
        frame = self.data.frame
        tags = dict(self.tags, **fold_tags(fold, frame.loc[frame["fold"] == fold, ID], len(frame)))
        taken = claim_fold(self.tracker, self.key, self.parent, fold, tags, self.scoped)
        if taken.state == "held":
            log.info("fold %d: being trained by a live process (%s): left to it", fold, taken.holder)
            return TakenFold(held_by=taken.holder)
        if taken.state == "done":
            res = stored_fold(self.tracker, taken.run, frame, fold)
            if res is not None:
                return TakenFold(stored=(res, taken.run.info.run_id))
            return TakenFold(run_id=self.tracker.start_run(f"fold {fold}", tags, parent_id=self.parent))
        return TakenFold(run_id=taken.run_id)

    @contextlib.contextmanager
    def fold(self, fold: int, child: str) -> Iterator[FoldRun]:
        """The fold run `child` (take_fold's) while the fold trains. Step metrics measured before a
        failure stay logged; on success the caller's values and files are logged and the run FINISHED."""
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
        self._open = [r for r in self._open if r != self.parent]

    def finish(self, folds: dict[int, FoldResult], fold_runs: dict[int, str],
               parts: BackboneParts | None = None) -> Closing:
        """Leave the unit. The job that finds every fold finished writes the CV over all of them on the
        parent (from this job's folds and the others' read back, as one run of them all would), with
        `parts` (trainer.save_models) the fold weights as one pyfunc model, then FINISHED; else the
        parent says how many folds are finished (or is left to the live process that settles it)."""
        self._open = [r for r in self._open if r != self.parent]  # settle() decides who holds it now
        outcome, finished = settle(self.tracker, self.key, self.parent, self.n_folds, self.scoped)
        count = f"{finished} of {self.n_folds}"
        if outcome == "complete":
            cv = self._parent_cv()
            return Closing(cv["rmse_oof"] if cv else float("nan"), cv, count)
        if outcome != "aggregate":
            oof = cv_values(self.data.frame, folds)[0]["rmse_oof"] if folds else float("nan")
            return Closing(oof, None, count)  # this job's folds: a search on a subset of folds scores them
        self._open.append(self.parent)
        every, runs = self._every_fold(folds, fold_runs)
        cv = log_cv(self.tracker, self.parent, self.data.frame, every)
        registry_error = None
        if parts is not None:
            uri = log_cv_model(self.tracker, self.parent, self.whole, runs, parts, self.data.frame[TEXT].tolist())
            registry_error = register(self.tracker, self.parent, uri, self.cfg.tracking.get("register_as"))
        self.tracker.delete_tag(self.parent, PRUNED_TAG)  # a resumed run that a pruner had stopped is whole now
        self.tracker.delete_tag(self.parent, FOLDS_FINISHED_TAG)
        self.tracker.finish(self.parent, "FINISHED")
        self._open.remove(self.parent)
        return Closing(cv["rmse_oof"], cv, count, registry_error)

    def _every_fold(self, folds: dict[int, FoldResult], fold_runs: dict[int, str]
                    ) -> tuple[dict[int, FoldResult], dict[int, str]]:
        """Every fold of the config: this job's, and the others' read back from their runs."""
        previous = find_previous(self.tracker, self.key, self.parent if self.scoped else None)
        every, runs = dict(folds), dict(fold_runs)
        for fold in range(self.n_folds):
            if fold not in every:
                run = previous.finished_folds[fold]
                every[fold], runs[fold] = stored_fold(self.tracker, run, self.data.frame, fold), run.info.run_id
        missing = [f for f, res in every.items() if res is None]
        if missing:
            raise RuntimeError(f"folds {missing} of run {self.parent} scored other rows than this config's folds")
        return every, runs

    def _parent_cv(self) -> dict[str, float] | None:
        run = self.tracker.get_run(self.parent)
        if not complete(run) or "rmse_mean" not in run.data.metrics:
            return None
        return {k: run.data.metrics[k] for k in CV_VALUES if k in run.data.metrics}

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

    def _unclaimed(self, unit: Claim) -> Unclaimed:
        if unit.state == "finished":
            log.info("already finished in run %s: nothing to do (tracking.resume=false runs it again)", unit.parent_id)
            return self._stored_result(unit.previous)
        log.warning("skipped: run %s of this config is being run by a live process (%s); rerun this command "
                    "when it has finished to collect its result", unit.parent_id or "(not written yet)", unit.holder)
        return Unclaimed(unit.parent_id, held_by=unit.holder)

    def _stored_result(self, previous: PreviousRun) -> Unclaimed:
        self.parent = previous.parent_id
        cv = self._parent_cv()
        finished = sum(f in previous.finished_folds for f in range(self.n_folds))
        return Unclaimed(previous.parent_id,
                         folds={f: stored_fold(self.tracker, previous.finished_folds[f], None) for f in self.folds},
                         rmse_oof=cv["rmse_oof"] if cv else float("nan"), cv=cv, finished=f"{finished} of {self.n_folds}")

