"""A finished CV run's fold models -> one MLflow pyfunc model on its parent run."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
import torch
import transformers
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from omegaconf import DictConfig

import ftsweep
from ftsweep import pyfunc_model
from ftsweep.checkpoints import MODEL_FOLDER, checkpoint_name
from ftsweep.ensemble import write_folder
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep")


def log_cv_model(tracker: Tracker, parent: str, cfg: DictConfig, fold_runs: dict[int, str], backbone_config,
                 tokenizer, example_texts: list[str]) -> str:
    """Download each fold's best weights, lay out the ensemble folder, log it as runs:/<parent>/model."""
    text = str(cfg.data.text_column)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoints = [tracker.download(run_id, f"{MODEL_FOLDER}/{checkpoint_name(fold)}", tmp / "dl" / str(fold))
                       for fold, run_id in sorted(fold_runs.items())]
        folder = write_folder(tmp / "ensemble", cfg, backbone_config, tokenizer, checkpoints)
        signature = ModelSignature(inputs=Schema([ColSpec("string", text)]), outputs=Schema([ColSpec("double", "target")]))
        uri = tracker.log_pyfunc(
            parent, pyfunc_model.__file__, {"ensemble": str(folder)}, [str(Path(ftsweep.__file__).parent)], signature,
            pd.DataFrame({text: example_texts[:2]}),
            [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
             "safetensors", "pandas", "omegaconf", "numpy"],
            cfg.tracking.get("register_as") or None)
    log.info("logged the %d-fold ensemble as an MLflow model: %s", len(fold_runs), uri)
    return uri
