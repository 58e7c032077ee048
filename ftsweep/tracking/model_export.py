"""A CV run's fold models in MLflow: logged as one pyfunc model on the parent run, and read back
as files for python -m ftsweep.predict (the model's ensemble folder, else the run's config and fold
checkpoints): data only. The model's logged code runs in `mlflow.pyfunc.load_model` and `mlflow
models predict/serve`, never in ftsweep.predict (docs/mlflow-and-predictions.md: trust boundary)."""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import transformers
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from omegaconf import DictConfig, OmegaConf

import ftsweep
from ftsweep.data.folds import folds_to_run
from ftsweep.errors import FtsweepError
from ftsweep.model.checkpoints import MODEL_FOLDER, checkpoint_name
from ftsweep.model.ensemble import BackboneParts, write_folder
from ftsweep.tags import CONFIG_KEY_TAG, FOLD_TAG, KIND_TAG, TABLE_KIND
from ftsweep.tracking import pyfunc_model
from ftsweep.tracking.store import Tracker

log = logging.getLogger("ftsweep")
ENSEMBLE = "ensemble"  # the model's artifact: the folder write_folder lays out


def log_cv_model(tracker: Tracker, parent: str, cfg: DictConfig, fold_runs: dict[int, str], parts: BackboneParts,
                 example_texts: list[str]) -> str:
    """Download each fold's best weights, lay out the ensemble folder, log it as runs:/<parent>/model."""
    text = str(cfg.data.text_column)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoints = [tracker.download(run_id, f"{MODEL_FOLDER}/{checkpoint_name(fold)}", tmp / "dl" / str(fold))
                       for fold, run_id in sorted(fold_runs.items())]
        folder = write_folder(tmp / "ensemble", cfg, parts, checkpoints)
        signature = ModelSignature(inputs=pyfunc_model.input_schema(text), outputs=Schema([ColSpec("double", "target")]))
        model = {"python_model": pyfunc_model.__file__, "artifacts": {ENSEMBLE: str(folder)},
                 "code_paths": [str(Path(ftsweep.__file__).parent)], "signature": signature,
                 "input_example": pd.DataFrame({text: example_texts[:2]}),
                 "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}",
                                      f"transformers=={transformers.__version__}",
                                      "safetensors", "pandas", "omegaconf", "numpy"]}
        uri = tracker.log_pyfunc(parent, model)
    log.info("logged the %d-fold ensemble as an MLflow model: %s", len(fold_runs), uri)
    return uri


def register(tracker: Tracker, parent: str, model_uri: str, name: str | None) -> str | None:
    """tracking.register_as: a registry that refuses (no registry on the server, no permission) must
    not turn finished folds into a failed run; the message says how to register the model later."""
    if not name:
        return None
    try:
        version = tracker.register_model(model_uri, name)
    except Exception as exc:  # noqa: BLE001 (MLflow and REST errors alike)
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        later = (f"import mlflow; mlflow.set_tracking_uri({json.dumps(tracker.uri)}); "
                 f"mlflow.register_model({json.dumps(model_uri)}, {json.dumps(name)})")
        return (f"the CV run {parent} finished and is kept, but registering its model as {name!r} failed "
                f"({reason}); register it later: python -c {shlex.quote(later)}")
    log.info("registered %s as version %s of model %r", model_uri, version, name)
    return None


def ensemble_folder(tracker: Tracker, run_id: str, folder: Path) -> Path | None:
    """The ensemble folder of the run's logged model, as files (None: the run has no model)."""
    return tracker.download_model_files(run_id, f"artifacts/{ENSEMBLE}", folder)


@dataclass
class FoldModels:
    """A CV run's config and where each fold's best weights are logged; nothing downloaded yet."""

    cfg: DictConfig
    located: dict[int, tuple[str, str]]  # fold -> (its fold run id, the weights' artifact path)

    @property
    def complete(self) -> bool:
        return sorted(self.located) == sorted(folds_to_run(self.cfg))  # cv.folds may list them in any order

    def download(self, tracker: Tracker, folder: Path) -> list[Path]:
        return [fetch(tracker, child_id, name, folder) for _, (child_id, name) in sorted(self.located.items())]


def fetch(tracker: Tracker, run_id: str, artifact: str, folder: Path) -> Path:
    """One artifact of a run, downloaded; one that is gone from the store is one line."""
    try:
        return tracker.download(run_id, artifact, folder)
    except (MlflowException, OSError) as exc:
        raise FtsweepError(f"run {run_id} lacks its artifact {artifact} at {tracker.uri} "
                           f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
                           f"rerun the run with trainer.save_models=true.") from None


def find_fold_models(tracker: Tracker, run_id: str, folder: Path, allow_partial: bool = False) -> FoldModels:
    """The run's config (downloaded into `folder`) and its fold weights' places. A run that is not a
    finished ftsweep CV run with every fold's model is refused unless `allow_partial`."""
    client = tracker.client
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 (MLflow raises several kinds for an unknown id)
        raise FtsweepError(f"no run {run_id!r} at {tracker.uri}; pass the parent run id and tracking.uri.") from None
    tags = run.data.tags
    if FOLD_TAG in tags:
        raise FtsweepError(f"run {run_id} is a fold run; pass its parent run id: run_id={tags.get('mlflow.parentRunId')}")
    if CONFIG_KEY_TAG not in tags:
        what = "a results-table run" if tags.get(KIND_TAG) == TABLE_KIND else "not an ftsweep CV run"
        raise FtsweepError(f"run {run_id} is {what}; pass the parent run of a CV run (its name is the row label).")
    cfg = OmegaConf.load(fetch(tracker, run_id, "config.yaml", folder))
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'FINISHED'")
    by_fold = {}
    for child in sorted(children, key=lambda r: r.info.start_time, reverse=True):  # newest per fold
        fold = int(child.data.tags[FOLD_TAG])
        name = f"{MODEL_FOLDER}/{checkpoint_name(fold)}"  # its own fold's file, never another one copied there
        if name in {a.path for a in client.list_artifacts(child.info.run_id, MODEL_FOLDER)}:
            by_fold.setdefault(fold, (child.info.run_id, name))
    if not by_fold:
        raise FtsweepError(f"run {run_id} was saved without fold models; rerun it with trainer.save_models=true.")
    wanted = folds_to_run(cfg)
    missing = [f for f in wanted if f not in by_fold]
    if (missing or run.info.status != "FINISHED") and not allow_partial:
        raise FtsweepError(f"run {run_id} is {run.info.status} with fold models {sorted(by_fold)} of {wanted}; "
                           f"finish it (rerun its command) or pass allow_partial=true to average the ones it has.")
    return FoldModels(cfg, by_fold)


def fold_checkpoints(tracker: Tracker, run_id: str, folder: Path, allow_partial: bool = False
                     ) -> tuple[DictConfig, list[Path]]:
    """find_fold_models, then the weights downloaded into `folder`."""
    models = find_fold_models(tracker, run_id, folder, allow_partial)
    return models.cfg, models.download(tracker, folder)
