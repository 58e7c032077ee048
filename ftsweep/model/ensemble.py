"""The fold models of one CV run as one predictor: each fold's weights, the mean of their outputs.

One loader serves both ways in: the logged MLflow pyfunc model (a self-contained folder, see
tracking/pyfunc_model.py) and `python -m ftsweep.predict` (that folder, downloaded as files, or a run's
fold checkpoints where it has no model). The folder holds everything to rebuild the models offline: the run's config, the backbone's
Hugging Face config, the tokenizer and every fold's safetensors. All of it is data (YAML, JSON,
tokenizer files, safetensors), read by ftsweep's own code with trust_remote_code=False: a
folder can change the numbers, never run code.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ftsweep.data.batching import encode
from ftsweep.errors import ModelError
from ftsweep.model.checkpoints import load_state
from ftsweep.model.inference import predict as predict_rows
from ftsweep.model.regressor import architecture_config, build_regressor, load_tokenizer

CONFIG, BACKBONE, TOKENIZER, FOLDS = "config.yaml", "backbone", "tokenizer", "folds"


@dataclass(frozen=True)
class BackboneParts:
    """What rebuilds a run's fold models besides their weights: the backbone's Hugging Face config
    and the tokenizer."""

    config: object  # a transformers PretrainedConfig
    tokenizer: object


@dataclass
class Ensemble:
    run_cfg: DictConfig
    backbone_config: object  # transformers PretrainedConfig
    tokenizer: object
    checkpoints: list[Path]

    def predict(self, texts: list[str], device: torch.device, autocast_dtype: torch.dtype | None = None,
                batch_size: int = 128) -> np.ndarray:
        """Mean prediction of the fold models for each text (one model in memory at a time)."""
        if not texts:
            return np.zeros(0)
        encoded = encode(list(texts), self.tokenizer, int(self.run_cfg.trainer.max_length))
        rows = np.arange(len(texts))
        preds = []
        for path in self.checkpoints:
            model = build_regressor(AutoModel.from_config(self.backbone_config, trust_remote_code=False),
                                    self.run_cfg.head)
            load_state(model, path)
            model.to(device)
            preds.append(predict_rows(model, encoded, rows, batch_size, int(self.run_cfg.trainer.pad_to_multiple_of),
                                      device, autocast_dtype))
        return np.mean(preds, axis=0)


def from_run(run_cfg: DictConfig, checkpoints: list[Path]) -> Ensemble:
    """From a run's config and its downloaded fold checkpoints (model and tokenizer as configured)."""
    return Ensemble(run_cfg, architecture_config(run_cfg.model), load_tokenizer(run_cfg.model), list(checkpoints))


def write_folder(folder: Path, run_cfg: DictConfig, parts: BackboneParts, checkpoints: list[Path]) -> Path:
    """Lay out a self-contained ensemble folder (what the MLflow model ships)."""
    (folder / FOLDS).mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    parts.config.save_pretrained(folder / BACKBONE)
    parts.tokenizer.save_pretrained(folder / TOKENIZER)
    for path in checkpoints:
        shutil.copy(path, folder / FOLDS / path.name)
    return folder


def from_folder(folder: Path) -> Ensemble:
    """From a folder write_folder laid out (a logged model's artifacts/ensemble). A config or
    tokenizer naming custom code (auto_map) is read as the built-in class of its type or refused."""
    folder = Path(folder)
    try:
        backbone_config = AutoConfig.from_pretrained(folder / BACKBONE, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model folder {folder} ({str(exc).splitlines()[0][:200]}).") from None
    return Ensemble(OmegaConf.load(folder / CONFIG), backbone_config, tokenizer,
                    sorted((folder / FOLDS).glob("*.safetensors")))
