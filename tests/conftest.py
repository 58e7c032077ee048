"""Shared fixtures: compose the real configs, shrunk to a tiny random-init model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import ftsweep  # noqa: F401  (registers resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY = ["model=tiny", "cv.n_folds=2", "trainer.epochs=1", "trainer.batch_size=8", "trainer.max_steps=6",
        "data.max_rows=64", "trainer.max_length=32"]


def compose_cfg(overrides: list[str], output_root: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.output_root={output_root}"])
    with open_dict(cfg):
        cfg.tracking.uri = f"sqlite:///{output_root}/mlflow.db"
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> a tiny config writing under tmp_path."""
    return lambda *overrides: compose_cfg([*TINY, *overrides], tmp_path)


def run_cli(module: str, *args: str, cwd: Path, timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line, as a user types it (`python -m ftsweep ...`)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    for name in ("FTSWEEP_DEBUG", "MLFLOW_TRACKING_URI", "FTSWEEP_OUTPUTS"):
        full_env.pop(name, None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
