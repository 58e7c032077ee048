"""What MLflow users expect of a run: dataset, source and description filled in, and the
CV ensemble as a pyfunc model that MLflow's own tools load, serve and register."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ftsweep.cv.pipeline import run_cv
from ftsweep.data.demo import generate

from conftest import TINY, at_once, cli_env, run_cli

pytestmark = pytest.mark.slow


def test_the_cv_ensemble_is_an_mlflow_model(tmp_path, make_cfg, one_thread):
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
        predicted = start(run_cli, "ftsweep.predict", f"run_id={run_id}", f"data.path={tmp_path}/test.csv",
                          f"output={tmp_path}/submission.csv", f"tracking.uri={uri}", f"paths.output_root={tmp_path}",
                          cwd=tmp_path)
        loaded = start(subprocess.run, [sys.executable, "-c", code, uri, run_id, str(tmp_path / "test.csv")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        served = start(subprocess.run, [mlflow_cli, "models", "predict", "-m", f"runs:/{run_id}/model", "-i", "test.csv",
                                        "-t", "csv", "--env-manager", "local", "-o", "out.json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=dict(env, MLFLOW_TRACKING_URI=uri))

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
