"""Fold weights on disk: safetensors only (no pickle, so loading runs no code)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODEL_FOLDER = "model"  # artifact folder of a fold run


def checkpoint_name(fold: int) -> str:
    return f"fold{fold}.safetensors"


def save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(path))
    return path


def load_state(model: torch.nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)), strict=True)
