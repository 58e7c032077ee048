"""The PostgreSQL-backed MLflow server under load and under a restart: every metric point arrives."""

from __future__ import annotations

import time

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from .helpers import experiment_runs, finished_units, sweep_dir, unique, wait_midway

pytestmark = pytest.mark.cluster

STEPS, EVERY, PER_EPOCH = 200, 15, 25
# 200 training rows per fold at batch 8 are 25 steps an epoch; 8 epochs are capped at STEPS.
POINTS = ["model=tiny", "cv.n_folds=2", "data.max_rows=400", "trainer.batch_size=8", "trainer.max_length=32",
          "trainer.epochs=8", f"trainer.max_steps={STEPS}", "eval=frequent", f"eval.every_n_batches={EVERY}"]
LAYERS = ["embeddings", "layer_0", "layer_1", "head"]  # model=tiny: 2 encoder layers


def expected_points() -> dict[str, list[int]]:
    """The steps at which a fold of POINTS logs each metric, from the config alone: train/loss and
    lr/<layer> at every step (0-based), val/rmse after every EVERY-th batch of each epoch (as the
    write-up counts) and once more at the end."""
    evals = [start + b for start in range(0, STEPS, PER_EPOCH) for b in range(EVERY, PER_EPOCH + 1, EVERY)
             if start + b <= STEPS]
    evals += [] if evals[-1] == STEPS else [STEPS]
    return {"train/loss": list(range(STEPS)), **{f"lr/{name}": list(range(STEPS)) for name in LAYERS}, "val/rmse": evals}


def logged_points(client: MlflowClient, run: Run) -> dict[str, list[int]]:
    keys = [k for k in run.data.metrics if k.startswith(("train/", "lr/", "val/"))]
    return {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in keys}


def test_four_parallel_jobs_lose_no_metric_point(cluster, tmp_path):
    experiment = unique("parallel")
    out = cluster.run("ftsweep", "-m", *POINTS, "optimizer=adamw,llrd", "trainer.seed=0,1", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=4", f"tracking.uri={cluster.uri}", f"tracking.experiment={experiment}",
                      f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parents, folds = experiment_runs(cluster.uri, experiment)
    assert len(parents) == 4 and len(folds) == 8 and len(set(finished_units(folds))) == 8
    assert {r.info.status for r in parents + folds} == {"FINISHED"}
    client, expected = MlflowClient(cluster.uri), expected_points()
    assert expected["val/rmse"] == [15, 40, 65, 90, 115, 140, 165, 190, 200]
    assert sum(len(v) for v in expected.values()) == 5 * 200 + 9  # > 1,000: several log_batch calls per fold
    for fold in folds:
        assert logged_points(client, fold) == expected, fold.data.tags["ftsweep.label"]
        assert fold.data.metrics["rmse_best"] == min(m.value for m in client.get_metric_history(fold.info.run_id, "val/rmse"))


def test_server_restart_midway_loses_nothing(cluster, tmp_path):
    """The server goes away for ~15 s while two SLURM jobs train and log. MLflow's client retries
    connection errors with exponential back-off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, factor 2: up to
    ~2 min), so the jobs carry on; what was logged before stays, what was sent after arrives once."""
    experiment = unique("restart")
    args = ["-m", *POINTS, "optimizer=adamw,llrd",
            f"tracking.experiment={experiment}", *cluster.launcher(), f"paths.output_root={tmp_path}"]
    proc = cluster.popen("ftsweep", *args, cwd=tmp_path)
    wait_midway(cluster.uri, experiment, proc)
    client = MlflowClient(cluster.uri)
    before = {r.info.run_id: logged_points(client, r) for r in experiment_runs(cluster.uri, experiment)[1]
              if r.info.status == "FINISHED"}
    cluster.server("down")
    time.sleep(15)
    assert proc.poll() is None, "the sweep ended while the server was down"
    cluster.server("up")
    output = proc.communicate(timeout=1800)[0]  # a bound for a loaded box (see helpers.Cluster.run)
    assert proc.returncode == 0, output[-3000:]
    logs = "".join(p.read_text() for p in (sweep_dir(tmp_path) / ".submitit").glob("*/*_log.*"))
    assert "Retrying" in logs or "retry" in logs.lower(), "no request met the outage; the test proved nothing"
    assert set(cluster.job_states(sweep_dir(tmp_path)).values()) == {"COMPLETED"}
    parents, folds = experiment_runs(cluster.uri, experiment)
    assert len(parents) == 2 and len(folds) == 4 and len(set(finished_units(folds))) == 4
    assert {r.info.status for r in parents + folds} == {"FINISHED"}
    expected = expected_points()
    for fold in folds:
        assert logged_points(client, fold) == expected
    assert before and all(logged_points(client, client.get_run(run_id)) == points for run_id, points in before.items())
