"""The MLflow store behind every run (its address checked first: addresses.py): one experiment per
sweep, runs, tags, batched metrics (`log_batch`, ~1,000 values a call), artifacts, datasets, pyfunc
models and unit claims. Writes to a shared SQLite store retry on "database is locked", so parallel
jobs lose nothing. Only tracking/ talks to MLflow (an import-linter contract)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Metric, Param, Run, ViewType
from mlflow.exceptions import MlflowException

from ftsweep import interrupts
from ftsweep.errors import FtsweepError
from ftsweep.locks import sqlite_path, store_lock
from ftsweep.tags import CLAIM_PREFIX, ERROR_TAG
from ftsweep.tracking.addresses import check_server, check_sqlite_file, normalize_uri
from ftsweep.tracking.new_store import create_from_template, open_client

log = logging.getLogger(__name__)
T = TypeVar("T")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars between ftsweep's own lines
# MLflow's SQL store logs every SQLAlchemy error with its traceback before raising it (a full disk: six
# tracebacks; a locked SQLite file that _retry waits out: one per try). ftsweep reports the raised error
# in one line; FTSWEEP_DEBUG=1 shows them all.
if os.environ.get("FTSWEEP_DEBUG", "") in ("", "0"):
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
MAX_METRICS, MAX_PARAMS = 1000, 100


@contextlib.contextmanager
def _quiet_mlflow(level: int = logging.CRITICAL) -> Iterator[None]:
    """MLflow's own lines below `level` (progress notes, logged tracebacks) would bury ftsweep's."""
    logger = logging.getLogger("mlflow")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def _fluent(uri: str) -> Iterator:
    """MLflow's fluent API pointed at `uri` for a moment. set_tracking_uri also exports
    MLFLOW_TRACKING_URI, which later jobs of this process and its children would inherit."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    env_before, global_before = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(global_before)
        if env_before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


# Errors worth another try. SQLite allows one writer; parallel sweep jobs wait their turn.
_LOCKED = ("database is locked", "database is busy")
# Parallel jobs that log the same dataset race on its insert (SQLite / PostgreSQL / MySQL words);
# the loser's second try finds the row there and only links it.
_DUPLICATE_ROW = ("UNIQUE constraint failed", "UniqueViolation", "duplicate key value", "Duplicate entry")


def _tag_filter(tag: str, value: str) -> str:
    """A filter string for runs whose `tag` equals `value`. MLflow's literals are '...' or "..."
    without escapes (a backslash before the closing quote breaks them), so a value with both
    quote kinds (a user's experiment name: it's "q") or a backslash is matched with LIKE, each
    such character as the one-character wildcard `_`; the caller keeps the exact matches."""
    if "\\" not in value and "'" not in value:
        return f"tags.`{tag}` = '{value}'"
    if "\\" not in value and '"' not in value:
        return f'tags.`{tag}` = "{value}"'
    pattern = value.replace("\\", "_").replace("'", "_").replace('"', "_")
    return f"tags.`{tag}` LIKE '{pattern}'"


def _retry(fn: Callable[[], T], attempts: int = 8, transient: tuple[str, ...] = _LOCKED) -> T:
    """`fn`, tried again (with back-off) while it fails with one of the `transient` messages."""
    for attempt in range(attempts):
        try:
            with interrupts.held():  # a signal now would leave SQLite locked for the clean-up (ftsweep.interrupts)
                return fn()
        except Exception as exc:  # MlflowException, RestException or SQLAlchemy's OperationalError
            if attempt == attempts - 1 or not any(word in str(exc) for word in transient):
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


RUN_NAME_CHARS = 250  # MLflow's runs.name column (varchar(250) on PostgreSQL; SQLite does not check)
UI_BASE = "http://127.0.0.1:5000"  # `make ui` on a SQLite store
# MLflow 3 opens an experiment on its GenAI overview; these open the runs table ("Model training")
# sorted by mean CV RMSE with the columns that answer the question, via MLflow's shared view state.
VIEW_KEY = "ftsweep"
_COLUMNS = ["metrics.`rmse_mean`", "metrics.`rmse_std`", "metrics.`rmse_last_mean`",
            "metrics.`rmse_oof`", "attributes.`Dataset`", "attributes.`Models`", "attributes.`Source`"]
VIEW_STATE = {  # one row per config (fold runs and the results-table run filtered out), best first
    "searchFilter": "tags.`ftsweep.fold` IS NULL AND tags.`ftsweep.kind` IS NULL",
    "orderByKey": "metrics.`rmse_mean`", "orderByAsc": True, "lifecycleFilter": "Active",
    "selectedColumns": _COLUMNS, "columnOrder": _COLUMNS,
}


def runs_link(tracking_uri: str, experiment_id: str, ui_base: str | None = None) -> str:
    base = ui_base or (tracking_uri if tracking_uri.startswith("http") else UI_BASE)
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
MODEL_NAME = "model"  # the parent run's pyfunc model: runs:/<parent id>/model


class Tracker:
    """One MLflow store and, usually, one experiment in it: every write ftsweep makes goes through
    here, with SQLite's "database is locked" retried and every failure one line (FtsweepError).

    Args:
        uri: the store: ``sqlite:///path/mlflow.db`` or ``http(s)://host:port`` (checked first:
            tracking/addresses.py).
        experiment: the experiment to open (created unless ``create=False``); None: a client for
            reading runs by id.
        create: False to only read: a missing store or experiment is then an error.

    Example:
        >>> tracker = Tracker("sqlite:///outputs/mlflow.db", "ftsweep")  # doctest: +SKIP
        >>> run_id = tracker.start_run("optimizer=llrd", {})  # doctest: +SKIP
        >>> tracker.log_values(run_id, {"rmse_mean": 0.51}); tracker.finish(run_id, "FINISHED")  # doctest: +SKIP
    """

    def __init__(self, uri: str, experiment: str | None, create: bool = True):
        uri = normalize_uri(uri)
        self.uri, self.experiment_name = uri, experiment
        db = sqlite_path(uri)
        if db is not None and not create and not db.exists():
            raise FtsweepError(f"no MLflow store at {db}; pass --tracking-uri (sqlite:///... or http://...).")
        if db is not None:
            check_sqlite_file(db)
        elif uri.startswith("http"):
            check_server(uri)
        with store_lock(uri):
            copied = db is not None and create and create_from_template(db)
            try:
                self.client = open_client(uri, db if copied else None)
            except Exception as exc:  # noqa: BLE001 (MLflow, SQLAlchemy and OS errors: one line each)
                raise FtsweepError(f"cannot open the MLflow store {uri}: {str(exc).splitlines()[0][:300]}") from None
            if experiment is not None:
                self._open_experiment(experiment, create, db)

    def _open_experiment(self, experiment: str, create: bool, db: Path | None) -> None:
        uri = self.uri
        if not create:
            found = _retry(lambda: self.client.get_experiment_by_name(experiment))
            if found is None:
                names = [e.name for e in self.client.search_experiments()]
                raise FtsweepError(f"no experiment {experiment!r} at {uri}; experiments there: {names}")
            self.experiment_id = found.experiment_id
            return
        # Next to a SQLite store, not in whatever cwd the job has (Hydra sweeps change it).
        artifacts = (db.parent / "artifacts").as_uri() if db is not None else None
        self.experiment_id = _retry(lambda: self._experiment(experiment, artifacts))
        view = f"mlflow.sharedViewState.{VIEW_KEY}"
        if view not in _retry(lambda: self.client.get_experiment(self.experiment_id)).tags:
            _retry(lambda: self.client.set_experiment_tag(self.experiment_id, view, json.dumps(VIEW_STATE)))

    def runs_link(self, ui_base: str | None = None) -> str:
        """The UI page of this experiment's runs (for SQLite stores, as `make ui` serves it)."""
        return runs_link(self.uri, self.experiment_id, ui_base)

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        name = name[:RUN_NAME_CHARS]  # a long label (paths, URIs in it) is refused by PostgreSQL's column
        tags = dict(tags, **{"mlflow.runName": name})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = _retry(lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name))
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            _retry(lambda k=key, v=value: self.client.set_tag(run_id, k, v))

    def get_run(self, run_id: str) -> Run:
        return _retry(lambda: self.client.get_run(run_id))

    def delete_tag(self, run_id: str, key: str) -> None:
        """Removes the tag if the run has it."""
        if key in self.get_run(run_id).data.tags:
            _retry(lambda: self.client.delete_tag(run_id, key))

    def delete_run(self, run_id: str) -> None:
        _retry(lambda: self.client.delete_run(run_id))

    def runs_tagged(self, tag: str, value: str) -> list[Run]:
        """Runs of this experiment whose `tag` equals `value`, newest first."""
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=_tag_filter(tag, value), max_results=5000,
            order_by=["attributes.start_time DESC"]))
        return [run for run in runs if run.data.tags.get(tag) == value]

    def running_runs(self) -> list[Run]:
        """Runs of this experiment that say RUNNING (some may have lost their process)."""
        return _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000))

    def all_runs(self) -> list[Run]:
        """Every run of this experiment, newest first."""
        return _retry(lambda: self.client.search_runs([self.experiment_id], max_results=50000,
                                                      order_by=["attributes.start_time DESC"]))

    def experiments(self) -> list[tuple[str, str]]:
        """(name, id) of the store's experiments, MLflow's empty Default and unit claims left out."""
        return [(e.name, e.experiment_id) for e in _retry(self.client.search_experiments)
                if e.name != "Default" and not e.name.startswith(CLAIM_PREFIX)]

    def create_claim(self, name: str, tags: dict[str, str]) -> bool:
        """Creates the experiment `name` with `tags` and hides it (a deleted experiment keeps its name
        taken): True for the one caller whose creation the store's unique experiment names let through,
        False when the name was taken already. A creation that landed although its answer was lost (and
        was sent again) is recognised by its `tags`."""
        try:
            created = _retry(lambda: self.client.create_experiment(name, tags=tags))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = _retry(lambda: self.client.get_experiment_by_name(name))
            return bool(tags) and found is not None and all(found.tags.get(k) == v for k, v in tags.items())
        _retry(lambda: self.client.delete_experiment(created))
        return True

    def claims(self, prefix: str, newest: int = 50) -> dict[str, dict[str, str]]:
        """name -> tags of the `newest` claims (hidden experiments included) whose name starts with `prefix`."""
        found = _retry(lambda: self.client.search_experiments(
            view_type=ViewType.ALL, filter_string=f"name LIKE '{prefix}%'", max_results=newest,
            order_by=["creation_time DESC"]))
        return {e.name: e.tags for e in found if e.name.startswith(prefix)}

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            _retry(lambda chunk=items[i : i + MAX_PARAMS]: self.client.log_batch(run_id, params=chunk))

    def log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), MAX_METRICS):
            _retry(lambda chunk=metrics[i : i + MAX_METRICS]: self.client.log_batch(run_id, metrics=chunk))

    def log_values(self, run_id: str, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.log_metrics(run_id, [Metric(k, float(v), now, 0) for k, v in values.items()])

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), folder))

    def log_dataset(self, run_id: str, frame, source: str, digest: str, name: str, targets: str) -> None:
        """The rows a run used as an MLflow dataset input (the UI's Dataset column and filters)."""
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": a local file, either way
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=source, targets=targets, name=name, digest=digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])
        _retry(lambda: self.client.log_inputs(run_id, datasets=[entity]), transient=_LOCKED + _DUPLICATE_ROW)

    def log_pyfunc(self, run_id: str, model: dict) -> str:
        """Log an MLflow pyfunc model under the run; returns its URI.
        `model`: mlflow.pyfunc.log_model's python_model, artifacts, code_paths, signature, ..."""
        with interrupts.held(), _fluent(self.uri) as mlflow, mlflow.start_run(run_id=run_id), \
                _quiet_mlflow(logging.WARNING):
            info = mlflow.pyfunc.log_model(name=MODEL_NAME, **model)  # start_run: the only way onto a run
        return info.model_uri

    def register_model(self, model_uri: str, name: str) -> str:
        """A new version of the registered model `name` (created if new); returns the version."""
        with interrupts.held(), _fluent(self.uri) as mlflow, _quiet_mlflow():
            return str(mlflow.register_model(model_uri, name).version)

    def download_model_files(self, run_id: str, path: str, folder: Path) -> Path | None:
        """Files of the run's logged model (runs:/<id>/model/<path>), downloaded and never loaded or
        imported; None when the run logged none (an older ftsweep, or an unfinished run)."""
        outputs = self.get_run(run_id).outputs
        models = [_retry(lambda i=out.model_id: self.client.get_logged_model(i))
                  for out in (outputs.model_outputs if outputs is not None else [])]
        models = [m for m in models if m.name == MODEL_NAME]
        if not models:
            return None
        newest = max(models, key=lambda m: m.creation_timestamp)
        # By its artifact location: MLflow resolves runs:/.../model through a client of the global
        # tracking URI, whatever it is passed (and a server's mlflow-artifacts:/ through that URI too).
        with _fluent(self.uri) as mlflow:
            try:
                return Path(_retry(lambda: mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{newest.artifact_location.rstrip('/')}/{path}", dst_path=str(folder))))
            except (MlflowException, OSError) as exc:
                raise FtsweepError(f"cannot download {path} of the model of run {run_id} "
                                   f"({str(exc).splitlines()[0][:200]}).") from None

    def reopen(self, run_id: str, tags: dict[str, str]) -> None:
        """The new owner's tags first, then RUNNING: never RUNNING under the dead owner it was taken from
        (another process's close_orphans would mark it KILLED)."""
        self.set_tags(run_id, {ERROR_TAG: "", **tags})
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def download(self, run_id: str, artifact: str, folder: Path) -> Path:
        return Path(_retry(lambda: self.client.download_artifacts(run_id, artifact, str(folder))))

    def finish(self, run_id: str, status: str, reason: str | None = None) -> None:
        """status: FINISHED, FAILED or KILLED; `reason` lands in the tag ftsweep.error."""
        if reason:
            _retry(lambda: self.client.set_tag(run_id, ERROR_TAG, reason[:5000]))
        _retry(lambda: self.client.set_terminated(run_id, status=status))


