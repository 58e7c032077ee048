"""What identifies a run: the flattened config, and the keys that say which runs are the same
computation (a unit of work, a results-table row, the same setup on other data); where the
code came from (git commit, MLflow's source tags)."""

from __future__ import annotations

import getpass
import hashlib
import json
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ftsweep.tags import FOLD_ROWS_TAG, FOLD_SIZES_TAG, FOLD_TAG

# Where output goes and how fast, not what is computed: left out of the keys.
# search.trial_id / storage: a retried trial (new id) resumes its lineage's run, wherever the study lives
# table.*: how results are compared (the ROPE), not what a run computes.
_NOT_IN_KEY = ("paths.", "tracking.", "trainer.num_threads", "trainer.workers_per_gpu", "cv.folds", "search.trial_id",
               "search.storage", "table.")


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


def whole_config(cfg: DictConfig) -> DictConfig:
    """The config a parent run records: every fold (cv.folds says which folds a job runs, not what the
    config computes)."""
    whole = cfg.copy()
    with open_dict(whole):
        whole.cv.folds = None
    return whole


def config_overrides(overrides: list[str]) -> list[str]:
    """A job's overrides less cv.folds: what names its config."""
    return [o for o in overrides if o.lstrip("+~").partition("=")[0] != "cv.folds"]


def fold_tags(fold: int, val_ids, n_rows: int) -> dict[str, str]:
    """A fold run's tags: its number, the digest of its validation row ids, its row counts."""
    ids = sorted(str(i) for i in val_ids)
    digest = hashlib.sha1("\x1f".join(ids).encode()).hexdigest()[:16]
    return {FOLD_TAG: str(fold), FOLD_ROWS_TAG: digest, FOLD_SIZES_TAG: f"{len(ids)}/{n_rows - len(ids)}"}


def setup_key(cfg: DictConfig) -> str:
    """The config and seed without the data: finds runs of the same setup on other data."""
    return config_key(cfg, "")


SOURCE_NAME = "python -m ftsweep"


def source_tags() -> dict[str, str]:
    """MLflow's own tags (the UI's Source and User columns); the fluent API would set them."""
    return {"mlflow.source.name": SOURCE_NAME, "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git_commit() or "", "mlflow.user": _user()}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
