"""tracking.register_as checked before training; a registry failure after training keeps the
finished run; runs a full disk left RUNNING are closed by the next run against the store."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import sys

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from sqlalchemy import event

from ftsweep.cv.pipeline import check_config, run_cv
from ftsweep.cv.summary import conclude
from ftsweep.errors import ConfigError
from ftsweep.jobs import run_guarded
from ftsweep.tracking.store import Tracker


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("'team/model v1'", r"tracking.register_as='team/model v1': MLflow model names cannot contain '/' or ':'"),
        ("a:b", r"cannot contain '/' or ':'"),
        ("..", r"be a path like '.' or '..'"),
        ("true", r"tracking.register_as=true must be a model name"),
        ("''", r"tracking.register_as='' must be a model name"),
    ],
)
def test_an_invalid_registered_model_name_is_refused_before_training(make_cfg, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg("trainer.save_models=true", f"tracking.register_as={value}"))


def test_register_as_without_saved_models_is_refused(make_cfg, tmp_path):
    cfg = make_cfg("tracking.register_as=readability")
    with pytest.raises(ConfigError, match=r"only trainer.save_models=true keeps; add trainer.save_models=true"):
        run_cv(cfg)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any store or run


def test_a_registry_failure_keeps_the_finished_run(make_cfg, monkeypatch, capsys, tmp_path):
    def refuse(self, model_uri, name):
        raise MlflowException("the server has no model registry")

    monkeypatch.setattr(Tracker, "register_model", refuse)
    cfg = make_cfg("trainer.save_models=true", "tracking.register_as=readability")
    result = run_cv(cfg)
    assert result.registry_error.startswith(f"the CV run {result.parent_run_id} finished and is kept, but "
                                            f"registering its model as 'readability' failed (the server has no "
                                            f"model registry); register it later: python -c ")
    client = MlflowClient(cfg.tracking.uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and "rmse_mean" in parent.data.metrics
    model = Tracker(cfg.tracking.uri, None).download_model_files(result.parent_run_id, "MLmodel", tmp_path)
    assert model is not None and model.is_file()  # runs:/<id>/model
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # the command says it in one line, exit 1
        run_guarded(lambda: conclude(cfg, result), None)  # what python -m ftsweep does after run_cv
    assert stop.value.code == 1
    out = capsys.readouterr()
    assert out.err.strip() == f"ftsweep: error: {result.registry_error}"
    assert f"MLflow run {result.parent_run_id}" in out.out  # the kept run's summary comes first


def _fill_sqlite(tracker: Tracker):
    """From now on SQLite refuses every write (as on a full disk, where not even its journal fits):
    MLflow's store raises an OperationalError, and logs it with tracebacks, on each try."""
    engine = tracker.client._tracking_client.store.engine

    def no_writes(con, _record):
        con.execute("PRAGMA query_only=1")

    event.listen(engine, "connect", no_writes)
    engine.dispose()
    return no_writes


def _run_until_the_disk_fills(cfg_yaml: str) -> None:
    """In a child process, whose death leaves its runs without an owner, as a real run's would."""
    real_log_artifact = Tracker.log_artifact

    def disk_fills_at_the_fold_end(self, run_id, path, folder=None):
        if path.name.startswith("lr_curves_fold"):  # the fold ran; its artifacts and run ends cannot be written
            _fill_sqlite(self)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_log_artifact(self, run_id, path, folder)

    Tracker.log_artifact = disk_fills_at_the_fold_end
    logging.basicConfig(stream=sys.stdout, level=logging.INFO)  # where the CLI's log lines go (Hydra's job log)
    cfg = OmegaConf.create(cfg_yaml)
    run_guarded(lambda: run_cv(cfg), None)


def test_a_full_disk_is_one_line_and_the_next_run_closes_what_it_left_running(make_cfg, capfd):
    cfg = make_cfg()
    child = multiprocessing.get_context("spawn").Process(
        target=_run_until_the_disk_fills, args=(OmegaConf.to_yaml(cfg, resolve=True),))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ftsweep: error: the disk is full"), err  # no MLflow tracebacks
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name("ftsweep").experiment_id
    left = client.search_runs([experiment])
    assert {r.info.run_name: r.info.status for r in left} == {"default": "RUNNING", "fold 0": "RUNNING"}

    other = run_cv(make_cfg("trainer.seed=9"))  # another config: it still closes the dead process's runs
    assert client.get_run(other.parent_run_id).info.status == "FINISHED"
    for run in left:
        now = client.get_run(run.info.run_id)
        assert now.info.status == "KILLED" and "its process" in now.data.tags["ftsweep.error"]
