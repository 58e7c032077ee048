"""The real command line in a subprocess, and what MLflow holds afterwards."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ftsweep.data.demo import generate

from helpers import TINY, at_once, run_cli

pytestmark = pytest.mark.slow


def _runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ftsweep")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _artifacts(client, run_id):
    return {a.path for a in client.list_artifacts(run_id)}


def test_tiny_run_logs_parent_and_nested_folds(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    out = run_cli("ftsweep", *TINY, "optimizer=llrd", f"tracking.uri={uri}", f"paths.output_root={tmp_path}",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client, parents, children = _runs(uri)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["ftsweep.fold"] for c in children} == {"0", "1"}
    # params: the flattened resolved config
    assert parent.data.params["optimizer.name"] == "llrd" and parent.data.params["cv.n_folds"] == "2"
    assert float(parent.data.params["optimizer.lr"]) == pytest.approx(3.5e-3)
    # metrics
    m = parent.data.metrics
    fold_best = [c.data.metrics["rmse_best"] for c in children]
    assert m["rmse_mean"] == pytest.approx(sum(fold_best) / 2)
    # the sample sd of two folds is |a - b| / sqrt(2) (the population sd would be |a - b| / 2)
    assert m["rmse_std"] == pytest.approx(abs(fold_best[0] - fold_best[1]) / 2**0.5)
    assert f"mean RMSE {m['rmse_mean']:.4f} ± {m['rmse_std']:.4f} (best checkpoint per fold)" in out.stdout
    assert {"rmse_oof", "rmse_last_mean"} <= set(m)
    child = children[0]
    assert {"rmse_best", "rmse_last"} <= set(child.data.metrics)
    # MLflow's system metrics on every fold run (a fold shorter than the 10 s interval: its one sample)
    assert all({"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(c.data.metrics)
               for c in children)
    loss = client.get_metric_history(child.info.run_id, "train/loss")
    assert sorted(x.step for x in loss) == list(range(4))  # 32 training rows, batch 8, 1 epoch
    assert len(client.get_metric_history(child.info.run_id, "val/rmse")) == 1
    lr_top = client.get_metric_history(child.info.run_id, "lr/layer_1")
    lr_emb = client.get_metric_history(child.info.run_id, "lr/embeddings")
    assert len(lr_top) == 4 and lr_top[0].value == pytest.approx(3.5e-3)
    assert lr_emb[0].value == pytest.approx(3.5e-3 * 0.81)
    # artifacts
    assert _artifacts(client, parent.info.run_id) >= {"config.yaml", "oof.csv", "folds.csv"}
    assert "lr_curves_fold0.png" in _artifacts(client, children[0].info.run_id) | _artifacts(client, children[1].info.run_id)
    oof = pd.read_csv(client.download_artifacts(parent.info.run_id, "oof.csv", str(tmp_path)))
    assert len(oof) == 64 and set(oof["fold"]) == {0, 1} and oof["pred_best"].notna().all()
    # the summary names the run and the UI command
    assert parent.info.run_id in out.stdout and "make ui" in out.stdout
    link = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning"
    assert link in out.stdout  # the runs table, not MLflow 3's GenAI overview
    assert "mean RMSE" in out.stdout


def test_folds_do_not_move_with_the_training_seed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with at_once() as start:  # one after another in this process (two processes at once: test_resume_safety)
        launched = [start(run_cli, "ftsweep", *TINY, "trainer.max_steps=1", f"trainer.seed={seed}",
                          f"tracking.uri={uri}", f"paths.output_root={tmp_path}", cwd=tmp_path) for seed in (1, 2)]
    for future in launched:
        out = future.result()
        assert out.returncode == 0, out.stderr[-2000:]
    client, parents, _ = _runs(uri)
    folds = [pd.read_csv(client.download_artifacts(p.info.run_id, "folds.csv", str(tmp_path / p.info.run_id)))
             for p in parents]
    assert folds[0].equals(folds[1])


def test_commonlit_format_file(tmp_path):
    frame = generate(60, words_per_passage=12, seed=5)
    frame["id"] = [f"c0{i:05x}" for i in range(60)]
    frame.loc[::7, "url_legal"] = "https://example.org/a"
    frame.loc[::7, "license"] = "CC BY 4.0"
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_cli("ftsweep", *TINY, "data=commonlit", f"data.path={path}", "data.max_rows=null",
                  f"tracking.uri={uri}", f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    client, parents, children = _runs(uri)
    assert parents[0].data.params["data.path"] == str(path) and len(children) == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_cli("ftsweep", *TINY, "data=commonlit", f"data.path={tmp_path}/nope.csv", f"tracking.uri={uri}",
                  f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"ftsweep: error: {tmp_path}/nope.csv: no such file. "
        "Give a CSV in CommonLit's format with data.path=/path/to/train.csv"
    )
    assert "Traceback" not in out.stderr
    out = run_cli("ftsweep", *TINY, "swa=on", "swa.start_epoch=3", f"tracking.uri={uri}", f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2 and "swa.start_epoch=3 must be before the last epoch" in out.stderr


def test_a_failing_fold_marks_runs_failed_and_keeps_finished_folds(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # fold 1 diverges: a huge rate with no clipping makes the loss non-finite in fp32
    out = run_cli("ftsweep", *TINY, "model.lr=1e30", "trainer.grad_clip=null", "trainer.max_steps=6",
                  f"tracking.uri={uri}", f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2 and "loss became" in out.stderr
    client, parents, children = _runs(uri)
    assert parents[0].info.status == "FAILED"
    assert "loss became" in parents[0].data.tags["ftsweep.error"]
    assert children[0].info.status == "FAILED" and children[0].data.metrics  # what was measured stays logged
