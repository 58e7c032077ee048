"""Faults and safety: determinism, failing multirun jobs, checksum of the bundled weights,
predictions from a finished run, and a real MLflow tracking server."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ftsweep.cv.pipeline import run_cv
from ftsweep.data.batching import encode
from ftsweep.data.demo import generate
from ftsweep.errors import ConfigError, ModelError
from ftsweep.model import regressor as model_module
from ftsweep.model.regressor import load_tokenizer

from helpers import TINY, at_once, run_cli
from helpers import mlflow_server as start_mlflow_server


def test_same_config_and_seed_give_identical_fold_rmses(make_cfg):
    first = run_cv(make_cfg("trainer.seed=3"))
    second = run_cv(make_cfg("trainer.seed=3", "tracking.experiment=again"))
    other = run_cv(make_cfg("trainer.seed=4", "tracking.experiment=other"))
    assert [r.rmse_best for r in first.folds.values()] == [r.rmse_best for r in second.folds.values()]
    assert [r.rmse_best for r in first.folds.values()] != [r.rmse_best for r in other.folds.values()]


def test_bundled_weights_are_checked_against_their_sha256(monkeypatch):
    model_module.bundled_model_dir.cache_clear()
    monkeypatch.setattr(model_module, "BUNDLED_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="not the published 0000"):
        model_module.bundled_model_dir()
    model_module.bundled_model_dir.cache_clear()


def test_unreachable_model_names_the_offline_ones(make_cfg):
    cfg = make_cfg("model=roberta_base", "model.name=/no/such/model", "trainer.max_length=32")
    with pytest.raises(ModelError, match=r"cannot load .*models that work offline: model=minilm_l6"):
        run_cv(cfg)


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_multirun(tmp_path):
    out = run_cli("ftsweep", "-m", *TINY, "reinit=on", "reinit.n=5,1", "tracking.experiment=failing",
                  f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]  # the other job ran, and the sweep says one failed
    assert "reinit.n=5 but tiny-bert has 2 encoder layers" in out.stdout + out.stderr
    assert "ftsweep: error: 1 of 2 sweep job(s) failed" in out.stderr
    assert "| reinit.n=1 | 2 |" in out.stdout  # the table of what finished is still printed
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("failing")
    finished = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    assert {r.data.tags.get("ftsweep.label") for r in finished if "ftsweep.fold" in r.data.tags} == {"reinit.n=1"}


@pytest.mark.slow
def test_predict_averages_the_saved_fold_models(tmp_path, make_cfg):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    test = generate(10, words_per_passage=12, seed=9)[["id", "excerpt"]]
    test.to_csv(tmp_path / "test.csv", index=False)
    with at_once() as start:  # the calls run in this process, one after another (helpers.at_once)
        saved = start(run_cli, "ftsweep", *TINY, "trainer.save_models=true", f"tracking.uri={uri}",
                      f"paths.output_root={tmp_path}", cwd=tmp_path)
        # then, in this process: a run saved without models (make_cfg: the same store), and the
        # clear line predict gives for it
        parent_id = run_cv(make_cfg("trainer.seed=5")).parent_run_id
        refused = start(run_cli, "ftsweep.predict", f"run_id={parent_id}", f"data.path={tmp_path}/test.csv",
                        f"tracking.uri={uri}", f"paths.output_root={tmp_path}", cwd=tmp_path)
        out = saved.result()
        assert out.returncode == 0, out.stderr[-2000:]
        client = MlflowClient(uri)
        runs = [r for r in client.search_runs([client.get_experiment_by_name("ftsweep").experiment_id])
                if r.data.tags.get("ftsweep.seed") != "5"]
        parent = next(r for r in runs if "ftsweep.fold" not in r.data.tags)
        child = next(r for r in runs if "ftsweep.fold" in r.data.tags)
        assert [a.path for a in client.list_artifacts(child.info.run_id, "model")][0].endswith(".safetensors")
        predicted = start(run_cli, "ftsweep.predict", f"run_id={parent.info.run_id}", f"data.path={tmp_path}/test.csv",
                          f"output={tmp_path}/submission.csv", f"tracking.uri={uri}", f"paths.output_root={tmp_path}",
                          cwd=tmp_path)
    pred = predicted.result()
    assert pred.returncode == 0, pred.stderr[-2000:]
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert list(sub.columns) == ["id", "target"] and sub["id"].tolist() == test["id"].tolist()
    assert sub["target"].notna().all() and "mean of 2 fold models" in pred.stdout
    # a run saved without models gets a clear line
    pred = refused.result()
    assert pred.returncode == 2
    assert pred.stderr.strip().splitlines()[-1] == (
        f"ftsweep: error: run {parent_id} was saved without fold models; rerun it with trainer.save_models=true.")


@pytest.fixture
def mlflow_server(tmp_path):
    with start_mlflow_server(tmp_path) as url:
        yield url


@pytest.mark.slow
def test_runs_land_on_a_real_tracking_server(tmp_path, mlflow_server):
    out = run_cli("ftsweep", *TINY, f"tracking.uri={mlflow_server}", f"paths.output_root={tmp_path}",
                  "tracking.resume=true", cwd=tmp_path)  # resume: the unit is claimed, as in a sweep
    assert out.returncode == 0, out.stderr[-2000:]
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("ftsweep").experiment_id])
    parent = next(r for r in runs if "ftsweep.fold" not in r.data.tags)
    children = [r for r in runs if "ftsweep.fold" in r.data.tags]
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert parent.data.metrics["rmse_mean"] == pytest.approx(sum(c.data.metrics["rmse_best"] for c in children) / 2)
    assert len(client.get_metric_history(children[0].info.run_id, "lr/head")) == 4
    assert {"config.yaml", "oof.csv", "folds.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    oof = pd.read_csv(client.download_artifacts(parent.info.run_id, "oof.csv", str(tmp_path)))
    assert len(oof) == 64
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
    # each section of the unit (the parent claimed, each fold, the unit settled) was a hidden claim
    # experiment, released as it ended: claims 1, 2 (its release), 3, 4, ..., none left held
    prefix = f"ftsweep.claim:{parent.info.experiment_id}/{parent.data.tags['ftsweep.config_key']}#"
    hidden = {int(e.name[len(prefix):]): e for e in client.search_experiments(view_type=ViewType.ALL)
              if e.name.startswith(prefix)}
    assert sorted(hidden) == list(range(1, 9))  # the claim, 2 folds, the settling: 4 sections
    assert {e.lifecycle_stage for e in hidden.values()} == {"deleted"}
    assert "ftsweep.owner" in hidden[7].tags and "ftsweep.owner" not in hidden[8].tags


def test_texts_longer_than_max_length_are_truncated_and_counted(make_cfg):
    tokenizer = load_tokenizer(make_cfg().model)
    encoded = encode(["word " * 100, "short text"], tokenizer, 16)
    assert encoded.n_truncated == 1
    assert encoded.lengths.tolist()[0] == 16 and encoded.ids[0][-1] == tokenizer.sep_token_id


def test_max_length_beyond_the_model_is_refused_before_loading(make_cfg):
    with pytest.raises(ConfigError, match="trainer.max_length=600 exceeds roberta-base's limit of 512 tokens"):
        run_cv(make_cfg("model=roberta_base", "trainer.max_length=600"))
    with pytest.raises(ConfigError, match="limit of 512 tokens"):
        run_cv(make_cfg("model=minilm_l6", "trainer.max_length=513"))
