"""What MLflow users expect of a run: dataset, source and description filled in, and the
CV ensemble as a pyfunc model that MLflow's own tools load, serve and register."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from transformers import AutoModel

from ftsweep.cv.pipeline import load_data, run_cv
from ftsweep.data.batching import encode
from ftsweep.data.demo import generate
from ftsweep.data.loading import ID, TEXT
from ftsweep.ensemble.predict import predict_csv
from ftsweep.model.checkpoints import MODEL_FOLDER, checkpoint_name, load_state
from ftsweep.model.ensemble import from_run
from ftsweep.model.inference import predict as predict_rows
from ftsweep.model.regressor import architecture_config, build_regressor, load_tokenizer
from ftsweep.tracking.model_export import fold_checkpoints
from ftsweep.tracking.store import Tracker

from helpers import CONF, TINY, at_once, cli_env, run_cli

pytestmark = pytest.mark.slow


def test_the_cv_ensemble_is_an_mlflow_model(tmp_path, make_cfg):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [*TINY, "trainer.save_models=true", "tracking.register_as=tiny-ensemble", f"tracking.uri={uri}",
              f"paths.output_root={tmp_path}"]
    out = run_cli("ftsweep", *common, "trainer.seed=1", "optimizer=llrd", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ftsweep").experiment_id],
                              filter_string="tags.`ftsweep.seed` = '1'")
    parent = next(r for r in runs if "ftsweep.fold" not in r.data.tags)
    run_id = parent.info.run_id

    test = generate(12, words_per_passage=12, seed=9)[["id", "excerpt"]]
    test["id"] = [f"{i:04d}" for i in range(12)]
    test.to_csv(tmp_path / "test.csv", index=False)
    # side by side: ftsweep.predict, a fresh process that loads runs:/<id>/model, and MLflow's own
    # CLI, offline, in this environment (one torch thread in each, like the CLI runs: the thread
    # count moves float rounding); meanwhile a second run here registers a second model version
    code = ("import sys, mlflow, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
            "m = mlflow.pyfunc.load_model(f'runs:/{sys.argv[2]}/model'); "
            "print(m.predict(pd.read_csv(sys.argv[3])[['excerpt']])['target'].to_json(orient='values'))")
    env = cli_env({"HF_HUB_OFFLINE": "1"})
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    with at_once() as start:
        loaded = start(subprocess.run, [sys.executable, "-c", code, uri, run_id, str(tmp_path / "test.csv")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        served = start(subprocess.run, [mlflow_cli, "models", "predict", "-m", f"runs:/{run_id}/model", "-i", "test.csv",
                                        "-t", "csv", "--env-manager", "local", "-o", "out.json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=dict(env, MLFLOW_TRACKING_URI=uri))
        predicted = start(run_cli, "ftsweep.predict", f"run_id={run_id}", f"data.path={tmp_path}/test.csv",
                          f"output={tmp_path}/submission.csv", f"tracking.uri={uri}", f"paths.output_root={tmp_path}",
                          cwd=tmp_path)

        # dataset, source, description
        (dataset,) = parent.inputs.dataset_inputs
        assert dataset.dataset.digest == parent.data.tags["ftsweep.data_fingerprint"][:16]
        assert json.loads(dataset.dataset.profile)["num_rows"] == 64
        tags = parent.data.tags
        assert tags["mlflow.source.name"] == "python -m ftsweep" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and "mlflow.source.git.commit" in tags
        note = tags["mlflow.note.content"]
        assert "layer-wise LR decay" in note and "Command: `python -m ftsweep " in note and "trainer.seed=1" in note
        assert "lr_curves.png" in {a.path for a in client.list_artifacts(run_id)}

        run_cv(make_cfg("trainer.save_models=true", "tracking.register_as=tiny-ensemble", "trainer.seed=2",
                        "optimizer=llrd"))
    versions = client.search_model_versions("name = 'tiny-ensemble'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # a new version per run

    pred = predicted.result()
    assert pred.returncode == 0, pred.stderr[-2000:]
    submission = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert submission["id"].tolist() == test["id"].tolist()

    # a fresh process loads runs:/<id>/model and predicts the same numbers
    fresh = loaded.result()
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    np.testing.assert_allclose(json.loads(fresh.stdout.strip().splitlines()[-1]), submission["target"], atol=1e-6)

    # MLflow's own CLI, offline, in this environment
    served = served.result()
    assert served.returncode == 0, served.stderr[-2000:]
    predictions = [row["target"] for row in json.loads((tmp_path / "out.json").read_text())["predictions"]]
    np.testing.assert_allclose(predictions, submission["target"], atol=1e-6)


def _fold_model_predictions(cfg, checkpoint, texts: list[str]) -> np.ndarray:
    """One fold's saved weights in a fresh model, on `texts` (fp32 on the CPU, as the fold was scored)."""
    model = build_regressor(AutoModel.from_config(architecture_config(cfg.model)), cfg.head)
    load_state(model, checkpoint)
    encoded = encode(texts, load_tokenizer(cfg.model), int(cfg.trainer.max_length))
    return predict_rows(model, encoded, np.arange(len(texts)), int(cfg.trainer.eval_batch_size),
                        int(cfg.trainer.pad_to_multiple_of), torch.device("cpu"), None)


def test_the_ensemble_averages_each_folds_best_weights(tmp_path, make_cfg, monkeypatch):
    """Against the trained fold models, not against itself: each fold's saved weights reproduce that
    fold's logged out-of-fold predictions of its best checkpoint (not of its last weights, which this
    run makes differ), and every way in to the ensemble predicts the mean of the fold models."""
    # a constant, high LR evaluated after every step: the best checkpoint comes before the last step
    cfg = make_cfg("trainer.save_models=true", "eval=frequent", "eval.every_n_batches=1", "trainer.epochs=2",
                   "trainer.max_steps=8", "model.lr=3e-2", "scheduler=constant")
    result = run_cv(cfg)
    frame = load_data(cfg).frame.set_index(ID)
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("ftsweep").experiment_id])
    fold_runs = {int(r.data.tags["ftsweep.fold"]): r.info.run_id for r in runs if "ftsweep.fold" in r.data.tags}
    assert sorted(fold_runs) == [0, 1]

    test = generate(12, words_per_passage=12, seed=9)[["id", "excerpt"]]
    test.to_csv(tmp_path / "test.csv", index=False)
    on_test = []
    for fold, run_id in sorted(fold_runs.items()):
        assert result.folds[fold].best_step < result.folds[fold].steps == 8  # best and last weights differ
        where = tmp_path / f"fold{fold}"
        logged = pd.read_csv(client.download_artifacts(run_id, "predictions.csv", str(where)), dtype={ID: str})
        assert sorted(logged[ID]) == sorted(frame.index[frame["fold"] == fold])  # its own validation rows
        assert np.abs(logged["pred_best"] - logged["pred_last"]).max() > 1e-3
        checkpoint = client.download_artifacts(run_id, f"{MODEL_FOLDER}/{checkpoint_name(fold)}", str(where))
        own = _fold_model_predictions(cfg, checkpoint, frame.loc[logged[ID], TEXT].tolist())
        np.testing.assert_allclose(own, logged["pred_best"], rtol=0, atol=1e-5)
        on_test.append(_fold_model_predictions(cfg, checkpoint, test["excerpt"].tolist()))
    mean = np.mean(on_test, axis=0)
    assert np.abs(on_test[0] - on_test[1]).max() > 1e-3  # one fold's model alone is not the mean

    parent = result.parent_run_id
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        predict_cfg = compose("predict", overrides=[f"run_id={parent}", f"data.path={tmp_path}/test.csv",
                                                    f"tracking.uri={cfg.tracking.uri}", "device=cpu"])
    fetched = []
    download = Tracker.download
    monkeypatch.setattr(Tracker, "download", lambda self, run_id, path, folder: fetched.append(path)
                        or download(self, run_id, path, folder))
    submission, n_models = predict_csv(predict_cfg)  # python -m ftsweep.predict: the logged pyfunc model
    monkeypatch.setattr(Tracker, "download", download)
    assert fetched == ["config.yaml"]  # the model's folder holds the weights: the fold checkpoints are not fetched too
    assert n_models == 2 and submission[ID].tolist() == test["id"].tolist()
    np.testing.assert_allclose(submission["target"], mean, rtol=0, atol=1e-5)
    # MLflow's own loader (it resolves runs:/ against the current tracking URI, set for this test only)
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", cfg.tracking.uri)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{parent}/model")
    np.testing.assert_allclose(pyfunc.predict(test[["excerpt"]])["target"], mean, rtol=0, atol=1e-5)
    # a run without the pyfunc model: its fold checkpoints averaged by the same Ensemble code
    run_cfg, checkpoints = fold_checkpoints(Tracker(cfg.tracking.uri, experiment=None, create=False), parent,
                                            tmp_path / "checkpoints")
    averaged = from_run(run_cfg, checkpoints).predict(test["excerpt"].tolist(), torch.device("cpu"))
    np.testing.assert_allclose(averaged, mean, rtol=0, atol=1e-5)
