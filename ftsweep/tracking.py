"""MLflow: one parent run per composed config, one nested run per fold.

The only module that talks to MLflow. Metrics are buffered and sent with
`log_batch` (one call per ~1,000 values, never one call per value); writes to a
shared SQLite store retry on "database is locked" so parallel jobs lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from ftsweep.errors import ConfigError, FtsweepError

log = logging.getLogger(__name__)
T = TypeVar("T")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars between ftsweep's own lines
MAX_METRICS, MAX_PARAMS = 1000, 100
# Where output goes and how fast, not what is computed: left out of the keys.
# search.trial_id / storage: a retried trial (new id) resumes its lineage's run, wherever the study lives
_NOT_IN_KEY = ("paths.", "tracking.", "trainer.num_threads", "cv.folds", "search.trial_id", "search.storage")


# A search trial's runs: its study, its trial (lineage) number, and the fold its pruner stopped it after.
STUDY_TAG, TRIAL_TAG, PRUNED_TAG = "ftsweep.study", "ftsweep.trial", "ftsweep.pruned"

SQLITE_MAGIC = b"SQLite format 3\x00"
REACH_TIMEOUT = 5.0  # seconds: an unreachable server is reported at once, not after minutes of retries


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def normalize_uri(uri: str) -> str:
    """One spelling per store: MLflow's relative `sqlite:///mlflow.db` becomes absolute (relative
    to the launch folder, so every sweep job means the same file); forms MLflow 3 refuses or
    that keep nothing are reported with the form to use."""
    uri = str(uri).strip()
    if not uri:
        raise ConfigError("tracking.uri is empty; use sqlite:///path/to/mlflow.db or http://host:port")
    db = sqlite_path(uri)
    if db is not None:
        if str(db) in ("", ":memory:"):
            raise ConfigError(f"tracking.uri={uri!r} keeps nothing; use sqlite:///path/to/mlflow.db")
        return f"sqlite:///{db.expanduser().absolute()}"
    if uri.startswith("sqlite:"):
        raise ConfigError(f"tracking.uri={uri!r}: write sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        where = f"sqlite:///{uri}" if uri.endswith(".db") or Path(uri).is_file() else f"sqlite:///{uri.rstrip('/')}/mlflow.db"
        raise ConfigError(f"tracking.uri={uri!r} is not a store address; use {where} or http://host:port")
    if uri.startswith("file:"):
        raise ConfigError(f"tracking.uri={uri!r}: MLflow 3 refuses the file store; use sqlite:///<folder>/mlflow.db")
    return uri


def _check_sqlite_file(db: Path) -> None:
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in db.parents if p.exists()), None)
        why = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else exc.strerror
        raise FtsweepError(f"cannot create the MLflow store's folder {db.parent} ({why}); "
                           f"point tracking.uri=sqlite:///... at a writable folder.") from None
    if db.is_dir():
        raise FtsweepError(f"the MLflow store {db} is a folder; name a file: tracking.uri=sqlite:///{db}/mlflow.db")
    if db.exists() and db.stat().st_size > 0:
        with open(db, "rb") as fh:
            if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                raise FtsweepError(f"{db} is not an SQLite database; point tracking.uri at another file "
                                   f"(or remove it if it is not yours to keep).")
    if not os.access(db.parent, os.W_OK):
        raise FtsweepError(f"cannot write to {db.parent}; point tracking.uri=sqlite:///... at a writable folder.")


def _check_server(uri: str) -> None:
    """One quick request the MLflow REST API answers; only a failed connection or a server that
    is not MLflow is reported (401/403: a server behind auth, which MLflow's client handles)."""
    probe = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        urllib.request.urlopen(probe, timeout=REACH_TIMEOUT).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            raise FtsweepError(f"{uri} answers, but not as an MLflow tracking server (HTTP {exc.code} for "
                               f"/api/2.0/mlflow/experiments/search); check tracking.uri / MLFLOW_TRACKING_URI.") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FtsweepError(f"cannot reach the MLflow server at {uri} ({reason}); start it (README: A shared "
                           f"tracking server) or fix tracking.uri / MLFLOW_TRACKING_URI.") from None


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


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[bool]:
    """Serialises, across processes on this machine, what must not interleave on one SQLite
    file: creating its schema (a second sweep would fail inside MLflow's migration) and claiming
    units. Yields whether the lock is exclusive (False for server stores: see units.claim)."""
    db = sqlite_path(uri)
    if db is None:
        yield False
        return
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Errors worth another try. SQLite allows one writer; parallel sweep jobs wait their turn.
_LOCKED = ("database is locked", "database is busy")
# Parallel jobs that log the same dataset race on its insert (SQLite / PostgreSQL / MySQL words);
# the loser's second try finds the row there and only links it.
_DUPLICATE_ROW = ("UNIQUE constraint failed", "UniqueViolation", "duplicate key value", "Duplicate entry")


def _quoted(value: str) -> str:
    """A filter-string literal: MLflow takes '...' or "..." and no escapes, so the quote the value lacks."""
    if "'" in value and '"' in value:
        raise FtsweepError(f"cannot search MLflow for a value with both quote kinds: {value!r}")
    return f'"{value}"' if "'" in value else f"'{value}'"


def _retry(fn: Callable[[], T], attempts: int = 8, transient: tuple[str, ...] = _LOCKED) -> T:
    """`fn`, tried again (with back-off) while it fails with one of the `transient` messages."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MlflowException, RestException or SQLAlchemy's OperationalError
            if attempt == attempts - 1 or not any(word in str(exc) for word in transient):
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys, e.g. optimizer.layer_decay -> '0.9'."""
    out: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _hash(params: dict[str, str]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def row_key(cfg: DictConfig, data_fingerprint: str) -> str:
    """What a results-table row is: the computation on these rows of data, whatever the seed."""
    params = flatten(cfg)
    kept = {k: v for k, v in params.items() if not k.startswith(_NOT_IN_KEY) and k != "trainer.seed"}
    return _hash({**kept, "data.fingerprint": data_fingerprint})


def config_key(cfg: DictConfig, data_fingerprint: str) -> str:
    """One parent run: the computation, its data and its seed. A unit of work is (config_key, fold)."""
    return _hash({"row": row_key(cfg, data_fingerprint), "seed": str(cfg.trainer.seed)})


def setup_key(cfg: DictConfig) -> str:
    """The config and seed without the data: finds runs of the same setup on other data."""
    return config_key(cfg, "")


SOURCE_NAME = "python -m ftsweep"
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


def source_tags() -> dict[str, str]:
    """MLflow's own tags (the UI's Source and User columns); the fluent API would set them."""
    return {"mlflow.source.name": SOURCE_NAME, "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git_commit() or "", "mlflow.user": _user()}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


@dataclass
class PreviousRun:
    """Earlier runs of the same config in this experiment (for resuming)."""

    parent_id: str
    parent_status: str
    finished_folds: dict[int, Run]  # fold -> its newest FINISHED child run
    parents: list[Run] = field(default_factory=list)  # every parent run of the key, newest first
    running_folds: list[Run] = field(default_factory=list)  # fold runs still marked RUNNING


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    def __init__(self, uri: str, experiment: str | None, create: bool = True):
        """`create=False`: only read; a missing store or experiment is an error.
        `experiment=None`: a client for reading runs by id."""
        uri = normalize_uri(uri)
        self.uri, self.experiment_name = uri, experiment
        db = sqlite_path(uri)
        if db is not None and not create and not db.exists():
            raise FtsweepError(f"no MLflow store at {db}; pass --tracking-uri (sqlite:///... or http://...).")
        if db is not None:
            _check_sqlite_file(db)
        elif uri.startswith("http"):
            _check_server(uri)
        with store_lock(uri):
            try:
                self.client = MlflowClient(tracking_uri=uri)  # creates (migrates) a new SQLite schema
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
        return _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{tag}` = {_quoted(value)}", max_results=5000,
            order_by=["attributes.start_time DESC"]))

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

    def log_pyfunc(self, run_id: str, python_model, artifacts: dict[str, str], code_paths: list[str], signature,
                   input_example, pip_requirements: list[str], register_as: str | None) -> str:
        """Log an MLflow pyfunc model under the run (and register a new version); returns its URI."""
        with _fluent(self.uri) as mlflow, mlflow.start_run(run_id=run_id):  # the only way to log a model to a run
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=python_model, artifacts=artifacts, code_paths=code_paths,
                signature=signature, input_example=input_example, pip_requirements=pip_requirements,
                registered_model_name=register_as)
        return info.model_uri

    def load_pyfunc(self, run_id: str):
        """The run's pyfunc model, or None when it has none (saved by an older ftsweep, or unfinished)."""
        with _fluent(self.uri) as mlflow:
            try:
                return mlflow.pyfunc.load_model(f"runs:/{run_id}/{MODEL_NAME}")
            except (MlflowException, OSError):
                return None

    def find_previous(self, key: str) -> PreviousRun | None:
        """The newest parent run with this config key, and every fold already FINISHED under any of them."""
        runs = self.runs_tagged("ftsweep.config_key", key)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        if not parents:
            return None
        finished: dict[int, Run] = {}
        for run in runs:
            fold = run.data.tags.get("ftsweep.fold")
            if fold is not None and run.info.status == "FINISHED":
                finished.setdefault(int(fold), run)
        running = [r for r in runs if "ftsweep.fold" in r.data.tags and r.info.status == "RUNNING"]
        return PreviousRun(parents[0].info.run_id, parents[0].info.status, finished, parents, running)

    def reopen(self, run_id: str, tags: dict[str, str]) -> None:
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        self.set_tags(run_id, {"ftsweep.error": "", **tags})

    def download(self, run_id: str, artifact: str, folder: Path) -> Path:
        return Path(_retry(lambda: self.client.download_artifacts(run_id, artifact, str(folder))))

    def finish(self, run_id: str, status: str, reason: str | None = None) -> None:
        """status: FINISHED, FAILED or KILLED; `reason` lands in the tag ftsweep.error."""
        if reason:
            _retry(lambda: self.client.set_tag(run_id, "ftsweep.error", reason[:5000]))
        _retry(lambda: self.client.set_terminated(run_id, status=status))


class FoldSink:
    """Buffers a fold's step metrics; `flush()` sends them in batches."""

    def __init__(self, tracker: Tracker, run_id: str, log_lr: bool = True, flush_at: int = 5000):
        self.tracker, self.run_id, self.flush_at, self.send_lr = tracker, run_id, flush_at, log_lr
        self.buffer: list[Metric] = []
        self._lr_layers: list[str] = []
        self._lr_chunks: list[np.ndarray] = []

    def log_steps(self, key: str, values: np.ndarray, first_step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
        self._maybe_flush()

    def log_lr(self, layers: list[str], rates: np.ndarray, first_step: int) -> None:
        """rates: [steps, layers] -> metrics lr/<layer> at each step."""
        if rates.size == 0:
            return
        self._lr_layers = list(layers)
        self._lr_chunks.append(rates)
        if not self.send_lr:
            return
        now = int(time.time() * 1000)
        for j, layer in enumerate(layers):
            self.buffer += [Metric(f"lr/{layer}", float(v), now, first_step + i) for i, v in enumerate(rates[:, j])]
        self._maybe_flush()

    def lr_history(self) -> tuple[list[str], np.ndarray]:
        """Layer names and the [steps, layers] rates logged so far (for the LR-curve figure)."""
        rates = np.concatenate(self._lr_chunks) if self._lr_chunks else np.zeros((0, len(self._lr_layers)))
        return self._lr_layers, rates

    def _maybe_flush(self) -> None:
        if len(self.buffer) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.tracker.log_metrics(self.run_id, self.buffer)
            self.buffer = []
