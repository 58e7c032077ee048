"""Predictions of a finished CV run on a CSV: the arguments checked before anything loads, then
the ensemble folder of the run's MLflow model (runs:/<id>/model), or its fold checkpoints where it
has none, averaged by the installed ftsweep's Ensemble code. Only data is read from the run's
artifacts: code logged with the model never runs here."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ftsweep.config.checks import validate_predict
from ftsweep.data.loading import ID, TEXT, load_texts
from ftsweep.errors import ConfigError
from ftsweep.files import file_problem
from ftsweep.model.ensemble import from_folder, from_run
from ftsweep.tracking.model_export import ensemble_folder, find_fold_models
from ftsweep.tracking.store import Tracker
from ftsweep.train.devices import cuda_visible, resolve_device


def check_args(cfg: DictConfig) -> Path:
    """Before anything is downloaded or predicted: the arguments a run needs, and where it writes."""
    validate_predict(cfg)
    if cfg.device == "cuda" and not cuda_visible():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or cpu.")
    for key, hint in (("run_id", "run_id=<parent run id> (the run's name is its row label; `make ui` lists them)"),
                      ("data.path", "data.path=/path/to/test.csv")):
        parent, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(cfg[parent] if parent else cfg, leaf):
            raise ConfigError(f"{key} is not set; add {hint}")
    out = Path(str(cfg.output)).expanduser()
    if out.is_dir():
        raise ConfigError(f"output={out} is a folder; name a file, e.g. output={out / 'submission.csv'}")
    if not out.parent.is_dir():
        blocker = next((p for p in out.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(f"output={out}: {blocker} is a file, not a folder; name a file in a folder.")
        raise ConfigError(f"output={out}: the folder {out.parent} does not exist; create it or name another file.")
    problem = file_problem(out)  # before minutes of predicting, not after
    if problem is not None:
        raise ConfigError(f"output={out} cannot be written ({problem}); name a file in a writable folder.")
    return out


def predict_csv(cfg: DictConfig) -> tuple[pd.DataFrame, int]:
    """The run's MLflow model's ensemble folder (config, tokenizer, fold safetensors) on the CSV; a
    run without one (saved by an older ftsweep, or unfinished with allow_partial=true) is averaged
    from its fold checkpoints. Either way the installed ftsweep's code predicts: the model's logged
    code (pyfunc_model.py, code/) is never imported, whoever wrote the artifacts."""
    frame = load_texts(Path(str(cfg.data.path)).expanduser(), cfg.data.id_column, cfg.data.text_column)
    tracker = Tracker(cfg.tracking.uri, experiment=None, create=False)
    device, autocast_dtype = resolve_device(OmegaConf.create({"device": cfg.device, "precision": "auto"}))
    run_id = str(cfg.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        models = find_fold_models(tracker, run_id, Path(tmp), bool(cfg.allow_partial))
        (Path(tmp) / "model").mkdir()
        # the model's folder holds the same weights: the fold checkpoints are downloaded only without it
        folder = ensemble_folder(tracker, run_id, Path(tmp) / "model") if models.complete else None
        source = f"the model of run {run_id}"
        ensemble = (from_folder(folder, bool(cfg.allow_partial), source) if folder is not None
                    else from_run(models.cfg, models.download(tracker, Path(tmp)), f"run {run_id}"))
        preds = ensemble.predict(frame[TEXT].tolist(), device, autocast_dtype, int(cfg.batch_size))
    return pd.DataFrame({ID: frame[ID], "target": preds}), len(ensemble.checkpoints)  # the models averaged
