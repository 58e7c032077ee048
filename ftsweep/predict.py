"""`python -m ftsweep.predict run_id=<parent run> data.path=test.csv`: average the fold models.

A thin CLI over the run's MLflow model (the CV ensemble, runs:/<id>/model): predicts every
row of the CSV with every fold model and writes the mean as submission.csv (id,target),
CommonLit's submission format. Runs are checked first (see fold_checkpoints).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from ftsweep.checkpoints import MODEL_FOLDER
from ftsweep.cli import check_command_line, guarded
from ftsweep.config import validate_predict
from ftsweep.cv import folds_to_run
from ftsweep.data import ID, TEXT, load_texts
from ftsweep.devices import resolve_device
from ftsweep.ensemble import from_run
from ftsweep.errors import ConfigError, FtsweepError
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep")


def fold_checkpoints(tracker: Tracker, run_id: str, folder: Path, allow_partial: bool = False
                     ) -> tuple[DictConfig, list[Path]]:
    """The run's config and its fold weights, downloaded into `folder`. A run that is not a
    finished ftsweep CV run with every fold's model is refused unless `allow_partial`."""
    client = tracker.client
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 (MLflow raises several kinds for an unknown id)
        raise FtsweepError(f"no run {run_id!r} at {tracker.uri}; pass the parent run id and tracking.uri.") from None
    tags = run.data.tags
    if "ftsweep.fold" in tags:
        raise FtsweepError(f"run {run_id} is a fold run; pass its parent run id: run_id={tags.get('mlflow.parentRunId')}")
    if "ftsweep.config_key" not in tags:
        what = "a results-table run" if tags.get("ftsweep.kind") == "table" else "not an ftsweep CV run"
        raise FtsweepError(f"run {run_id} is {what}; pass the parent run of a CV run (its name is the row label).")
    cfg = OmegaConf.load(tracker.download(run_id, "config.yaml", folder))
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'FINISHED'")
    by_fold = {}
    for child in sorted(children, key=lambda r: r.info.start_time, reverse=True):  # newest per fold
        names = [a.path for a in client.list_artifacts(child.info.run_id, MODEL_FOLDER) if a.path.endswith(".safetensors")]
        if names:
            by_fold.setdefault(int(child.data.tags["ftsweep.fold"]), (child.info.run_id, names[0]))
    if not by_fold:
        raise FtsweepError(f"run {run_id} was saved without fold models; rerun it with trainer.save_models=true.")
    wanted = folds_to_run(cfg)
    missing = [f for f in wanted if f not in by_fold]
    if (missing or run.info.status != "FINISHED") and not allow_partial:
        raise FtsweepError(f"run {run_id} is {run.info.status} with fold models {sorted(by_fold)} of {wanted}; "
                           f"finish it (rerun its command) or pass allow_partial=true to average the ones it has.")
    paths = [tracker.download(child_id, name, folder) for _, (child_id, name) in sorted(by_fold.items())]
    return cfg, paths


def _check_args(cfg: DictConfig) -> Path:
    """Before anything is downloaded or predicted: the arguments a run needs, and where it writes."""
    validate_predict(cfg)
    for key, hint in (("run_id", "run_id=<parent run id> (the run's name is its row label; `make ui` lists them)"),
                      ("data.path", "data.path=/path/to/test.csv")):
        parent, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(cfg[parent] if parent else cfg, leaf):
            raise ConfigError(f"{key} is not set; add {hint}")
    out = Path(str(cfg.output)).expanduser()
    if out.is_dir():
        raise ConfigError(f"output={out} is a folder; name a file, e.g. output={out / 'submission.csv'}")
    if not out.parent.is_dir():
        raise ConfigError(f"output={out}: the folder {out.parent} does not exist; create it or name another file.")
    return out


def predict_csv(cfg: DictConfig) -> tuple[pd.DataFrame, int]:
    """The run's MLflow model (runs:/<id>/model) on the CSV; a run without one (saved by an older
    ftsweep, or unfinished with allow_partial=true) is averaged from its fold checkpoints by the
    same Ensemble code the model wraps."""
    frame = load_texts(Path(str(cfg.data.path)).expanduser(), cfg.data.id_column, cfg.data.text_column)
    tracker = Tracker(cfg.tracking.uri, experiment=None, create=False)
    device, autocast_dtype = resolve_device(OmegaConf.create({"device": cfg.device, "precision": "auto"}))
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg, checkpoints = fold_checkpoints(tracker, str(cfg.run_id), Path(tmp), bool(cfg.allow_partial))
        model = tracker.load_pyfunc(str(cfg.run_id))
        if model is not None and len(checkpoints) == len(folds_to_run(run_cfg)):
            preds = model.predict(pd.DataFrame({str(run_cfg.data.text_column): frame[TEXT]}))["target"].to_numpy()
        else:
            preds = from_run(run_cfg, checkpoints).predict(frame[TEXT].tolist(), device, autocast_dtype,
                                                           int(cfg.batch_size))
    return pd.DataFrame({ID: frame[ID], "target": preds}), len(checkpoints)


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    def job() -> None:
        out = _check_args(cfg)
        submission, n_models = predict_csv(cfg)
        submission.to_csv(out, index=False)
        print(f"wrote {out.resolve()}: {len(submission)} rows, mean of {n_models} fold models")

    torch.set_grad_enabled(False)
    guarded(job, None)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
