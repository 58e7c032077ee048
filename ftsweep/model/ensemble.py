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
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ftsweep.data.batching import encode
from ftsweep.data.folds import folds_to_run
from ftsweep.errors import ModelError
from ftsweep.model.checkpoints import checkpoint_name, load_state
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
    source: str = "the model"  # what the user named: 'the model of run <id>', or the folder

    def predict(self, texts: list[str], device: torch.device, autocast_dtype: torch.dtype | None = None,
                batch_size: int = 128) -> np.ndarray:
        """Mean prediction of the fold models for each text (one model in memory at a time)."""
        if not self.checkpoints:  # the mean of no models is NaN: never a prediction
            raise ModelError(f"{self.source} has no fold weights to average.")
        if not texts:
            return np.zeros(0)
        encoded = encode(list(texts), self.tokenizer, int(self.run_cfg.trainer.max_length))
        rows = np.arange(len(texts))
        preds = []
        for path in self.checkpoints:
            model = self.fold_model(path)
            model.to(device)
            preds.append(predict_rows(model, encoded, rows, batch_size, int(self.run_cfg.trainer.pad_to_multiple_of),
                                      device, autocast_dtype))
        return np.mean(preds, axis=0)

    def fold_model(self, path: Path) -> torch.nn.Module:
        """The backbone and head with one fold's weights; a damaged file, or weights of another
        backbone (size), is one line naming the file."""
        model = build_regressor(AutoModel.from_config(self.backbone_config, trust_remote_code=False), self.run_cfg.head)
        try:
            load_state(model, path)
        except SafetensorError as exc:
            raise ModelError(f"the fold weights {path.name} of {self.source} cannot be read ({_first_line(exc)}); "
                             f"the file is damaged: rerun the run with trainer.save_models=true.") from None
        except RuntimeError as exc:  # load_state_dict: missing, unexpected or mis-sized tensors
            raise ModelError(f"the fold weights {path.name} of {self.source} do not fit its backbone "
                             f"{self.run_cfg.model.name} ({_first_line(exc)}); the weights are of another model: "
                             f"rerun the run with trainer.save_models=true.") from None
        return model


def _first_line(exc: BaseException) -> str:
    """The first line of an error that says something (load_state_dict's first names no tensor)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Error(s) in loading")] or lines or [type(exc).__name__]
    return useful[0][:200]


def from_run(run_cfg: DictConfig, checkpoints: list[Path], source: str = "the run") -> Ensemble:
    """From a run's config and its downloaded fold checkpoints (model and tokenizer as configured)."""
    return Ensemble(run_cfg, architecture_config(run_cfg.model), load_tokenizer(run_cfg.model), list(checkpoints),
                    source)


def write_folder(folder: Path, run_cfg: DictConfig, parts: BackboneParts, checkpoints: list[Path]) -> Path:
    """Lay out a self-contained ensemble folder (what the MLflow model ships)."""
    (folder / FOLDS).mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    parts.config.save_pretrained(folder / BACKBONE)
    parts.tokenizer.save_pretrained(folder / TOKENIZER)
    for path in checkpoints:
        shutil.copy(path, folder / FOLDS / path.name)
    return folder


def fold_files(folder: Path, run_cfg: DictConfig, allow_partial: bool = False, source: str | None = None) -> list[Path]:
    """The folder's fold weights, one per fold the run trained (its config's folds): a file of
    another fold is refused, and a missing one unless `allow_partial` (never none at all)."""
    source = source or str(folder)
    wanted = {checkpoint_name(fold): fold for fold in folds_to_run(run_cfg)}
    present = sorted(path.name for path in (folder / FOLDS).glob("*.safetensors"))
    extra = [name for name in present if name not in wanted]
    missing = [name for name in wanted if name not in present]
    folds = ", ".join(map(str, wanted.values()))
    if extra:
        raise ModelError(f"{source} has fold weights {', '.join(extra)} that are not of its run's folds ({folds}); "
                         f"remove them from {FOLDS}/, or rerun the run with trainer.save_models=true.")
    if len(missing) == len(wanted):
        raise ModelError(f"{source} has no fold weights ({FOLDS}/ lacks {', '.join(missing)}); "
                         f"rerun the run with trainer.save_models=true.")
    if missing and not allow_partial:
        raise ModelError(f"{source} lacks the fold weights {', '.join(missing)} of its run's folds ({folds}); "
                         f"rerun the run with trainer.save_models=true, or pass allow_partial=true to average the "
                         f"{len(wanted) - len(missing)} it has.")
    return [folder / FOLDS / name for name in present]


def from_folder(folder: Path, allow_partial: bool = False, source: str | None = None) -> Ensemble:
    """From a folder write_folder laid out (a logged model's artifacts/ensemble). A config or
    tokenizer naming custom code (auto_map) is read as the built-in class of its type or refused;
    its fold weights are those of its run's folds (fold_files)."""
    folder = Path(folder)
    source = source or str(folder)
    if not (folder / CONFIG).is_file():
        raise ModelError(f"{source} has no {CONFIG} (the run's config); rerun the run with trainer.save_models=true.")
    try:
        run_cfg = OmegaConf.load(folder / CONFIG)
        backbone_config = AutoConfig.from_pretrained(folder / BACKBONE, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER, trust_remote_code=False)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot load {source} ({_first_line(exc)}); rerun the run with "
                         f"trainer.save_models=true.") from None
    return Ensemble(run_cfg, backbone_config, tokenizer, fold_files(folder, run_cfg, allow_partial, source), source)
