"""Which overrides a multirun sweeps, and the names and labels that follow from them."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from ftsweep.tracking.naming import SWEPT_ENV, row_label, sweep_experiment_name, swept_keys


def test_swept_keys_are_the_comma_lists_and_sweep_functions():
    overrides = ["model=tiny", "reinit.n=0,1,2", "cv.folds=[0,1]", "trainer.seed=range(3)", "+label='a,b'",
                 "hydra/launcher=joblib"]
    assert swept_keys(overrides) == ["reinit.n", "trainer.seed"]


def test_experiment_name_is_the_command_without_output_settings():
    name = sweep_experiment_name(["optimizer=adamw,llrd", "model=tiny", "tracking.uri=sqlite:///x.db",
                                  "paths.output_root=/tmp/o", "hydra/launcher=joblib"])
    assert name == "sweep model=tiny optimizer=adamw,llrd"


def test_row_label_keeps_the_swept_overrides_but_not_the_seed(monkeypatch):
    monkeypatch.setenv(SWEPT_ENV, json.dumps(["optimizer", "trainer.seed"]))
    cfg = OmegaConf.create({"label": None})
    assert row_label(cfg, ["model=tiny", "optimizer=llrd", "trainer.seed=2"]) == "optimizer=llrd"
    assert row_label(OmegaConf.create({"label": "LLRD"}), ["optimizer=llrd"]) == "LLRD"


def test_a_sweep_named_after_a_long_command_fits_mlflow_and_stays_its_own():
    """An unnamed grid of a long command was named over MLflow's 500 characters: every job failed."""
    from ftsweep.tracking.naming import sweep_experiment_name

    long = ["trainer.seed=0,1", "label=" + "x" * 520]
    name = sweep_experiment_name(long)
    assert len(name) <= 500 and name.startswith("sweep label=xxx") and name == sweep_experiment_name(long)
    assert sweep_experiment_name(["trainer.seed=0,2", "label=" + "x" * 520]) != name  # another command, another name
    assert sweep_experiment_name(["trainer.seed=0,1"]) == "sweep trainer.seed=0,1"


def test_a_fold_job_is_named_and_labelled_as_its_config(monkeypatch):
    """cv.folds says which folds a job runs, not what it computes: a sweep and its fold-parallel form are one
    experiment, one config run as fold jobs logs where its single run does, and its row is its config's."""
    from ftsweep.tracking.naming import DEFAULT_EXPERIMENT

    grid = ["optimizer=adamw,llrd", "model=tiny"]
    assert sweep_experiment_name([*grid, "cv.folds=[0],[1],[2]"]) == sweep_experiment_name(grid)
    assert sweep_experiment_name(["model=tiny", "cv.n_folds=3", "cv.folds=[0],[1],[2]"]) == DEFAULT_EXPERIMENT
    assert sweep_experiment_name(["model=tiny"], swept=["cv.folds"]) == DEFAULT_EXPERIMENT  # hydra.sweeper.params
    monkeypatch.setenv(SWEPT_ENV, json.dumps(["cv.folds"]))
    cfg = OmegaConf.create({"label": None})
    assert row_label(cfg, ["model=tiny", "cv.n_folds=3", "cv.folds=[2]"]) == "model=tiny cv.n_folds=3"
    monkeypatch.setenv(SWEPT_ENV, json.dumps(["optimizer", "cv.folds"]))
    assert row_label(cfg, ["model=tiny", "optimizer=llrd", "cv.folds=[2]"]) == "optimizer=llrd"


def test_a_run_name_longer_than_mlflows_column_is_cut_to_it(migrated_store):
    """PostgreSQL refuses a runs.name over 250 characters (SQLite does not check): a label that
    holds paths and URIs failed every fold job of a SLURM sweep on the cluster's server."""
    from ftsweep.tracking.store import RUN_NAME_CHARS, Tracker

    tracker = Tracker(migrated_store, "long-names")
    label = "paths.output_root=/" + "x" * 400
    run = tracker.get_run(tracker.start_run(label, {}))
    assert RUN_NAME_CHARS == 250 and run.info.run_name == label[:250] and run.data.tags["mlflow.runName"] == label[:250]
