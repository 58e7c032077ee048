"""Sweeps through a real SLURM scheduler (sbatch via submitit) into the PostgreSQL-backed server."""

from __future__ import annotations

import signal

import pandas as pd
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from ftsweep.data.demo import generate

from .helpers import experiment_runs, finished_units, slurm_jobs, sweep_dir, table_lines, unique, wait_midway

pytestmark = pytest.mark.cluster

# table1's presets train 5 epochs with 50 warm-up steps and SWA from epoch 3: 96 training rows
# per fold at batch 8 make 12 steps an epoch, 60 in all, so every row's techniques really run.
# Grouped LLRD splits the layers into 3 groups: the tiny model gets a third layer. One torch
# thread in both runs: the thread count changes float rounding in the last bits of the weights.
TABLE1 = ["-m", "+sweep=table1", "model=tiny", "model.architecture.num_hidden_layers=3", "cv.n_folds=2",
          "data.max_rows=192", "trainer.batch_size=8", "trainer.max_length=32", "trainer.num_threads=1",
          "trainer.save_models=true"]
# Two configs whose folds last long enough to be caught midway: 520 steps, 15 s (idle machine) to
# 45 s (busy). scancel sends SIGTERM, which submitit ignores, and SIGKILL KillWait=5 s later: a
# fold that ends within those seconds still finishes.
LONG = ["-m", "model=tiny", "cv.n_folds=2", "data.max_rows=400", "trainer.epochs=40", "trainer.max_length=32",
        "optimizer=adamw,llrd"]
# One config of 3 folds (64 training rows each at batch 8: 16 steps), its folds as jobs of their own
FOLD_JOBS = ["model=tiny", "cv.n_folds=3", "data.max_rows=96", "trainer.batch_size=8", "trainer.max_length=32",
             "trainer.epochs=2"]


@pytest.fixture(scope="module")
def table1(cluster, tmp_path_factory):
    """The same table1 sweep twice: through SLURM into the server, and locally (basic launcher, SQLite)."""
    experiment = unique("table1")
    args = [*TABLE1, f"tracking.experiment={experiment}"]
    slurm_root, local_root = tmp_path_factory.mktemp("slurm"), tmp_path_factory.mktemp("local")
    on_slurm = cluster.run("ftsweep", *args, *cluster.launcher(), f"paths.output_root={slurm_root}", cwd=slurm_root)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = cluster.run("ftsweep", *args, f"paths.output_root={local_root}", cwd=local_root)
    assert local.returncode == 0, local.stderr[-3000:]
    return experiment, (slurm_root, on_slurm), (local_root, local)


def test_table1_through_sbatch_matches_the_local_run(cluster, table1):
    experiment, (slurm_root, on_slurm), (local_root, local) = table1
    # every job went through sbatch and SLURM's accounting saw it complete
    states = cluster.job_states(sweep_dir(slurm_root))
    assert len(states) == 7 and set(states.values()) == {"COMPLETED"}, states
    parents, folds = experiment_runs(cluster.uri, experiment)
    assert len(parents) == 7 and len(folds) == 14
    assert {r.info.status for r in parents + folds} == {"FINISHED"}
    assert len(set(finished_units(folds))) == 14
    # ... and the runs are rows in PostgreSQL, not in some local file
    with psycopg2.connect(cluster.database, passfile=cluster.env["PGPASSFILE"]) as db, db.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "WHERE e.name = %s AND r.status = 'FINISHED'", (experiment,))
        assert cur.fetchone()[0] == 7 + 14 + 1  # + the results-table run
    # the same numbers as the same sweep run locally (CPU runs are deterministic)
    rows = table_lines(on_slurm.stdout)
    assert len(rows) == 1 + 7 and rows == table_lines(local.stdout)  # the header and one row per preset
    remote_csv = pd.read_csv(sweep_dir(slurm_root) / "table/results.csv")
    pd.testing.assert_frame_equal(remote_csv, pd.read_csv(sweep_dir(local_root) / "table/results.csv"), check_exact=True)
    local_uri = f"sqlite:///{local_root}/mlflow.db"

    def fold_scores(uri):
        return sorted((r.data.tags["ftsweep.label"], r.data.tags["ftsweep.fold"], r.data.metrics["rmse_best"],
                       r.data.metrics["rmse_last"]) for r in experiment_runs(uri, experiment)[1])

    assert fold_scores(cluster.uri) == fold_scores(local_uri)


def test_table_and_predict_against_the_server(cluster, table1, tmp_path):
    experiment, (_, on_slurm), (local_root, _) = table1
    out = cluster.run("ftsweep.table", "--experiment", experiment, "--tracking-uri", cluster.uri,
                      "--out", str(tmp_path / "table"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert table_lines(out.stdout) == table_lines(on_slurm.stdout)
    assert (tmp_path / "table/results.png").stat().st_size > 5000

    # fold weights went up through the server's artifact proxy and come back bit-identical
    test = generate(12, words_per_passage=12, seed=9)[["id", "excerpt"]]
    test.to_csv(tmp_path / "test.csv", index=False)

    def submission(uri: str, name: str) -> pd.DataFrame:
        parents, _ = experiment_runs(uri, experiment)
        run_id = next(p.info.run_id for p in parents if p.data.tags["ftsweep.label"] == "Basic fine-tuning")
        pred = cluster.run("ftsweep.predict", f"run_id={run_id}", f"data.path={tmp_path}/test.csv",
                           f"output={tmp_path}/{name}", f"tracking.uri={uri}", f"paths.output_root={tmp_path}",
                           cwd=tmp_path)
        assert pred.returncode == 0, pred.stderr[-3000:]
        assert "mean of 2 fold models" in pred.stdout
        return pd.read_csv(tmp_path / name)

    remote = submission(cluster.uri, "remote.csv")
    assert remote["id"].tolist() == test["id"].tolist() and remote["target"].notna().all()
    pd.testing.assert_frame_equal(remote, submission(f"sqlite:///{local_root}/mlflow.db", "local.csv"), check_exact=True)


def test_scancel_midway_then_rerun_leaves_one_finished_run_per_unit(cluster, tmp_path):
    experiment = unique("scancel")
    args = [*LONG, f"tracking.experiment={experiment}", *cluster.launcher(), f"paths.output_root={tmp_path}"]
    proc = cluster.popen("ftsweep", *args, cwd=tmp_path)
    label = wait_midway(cluster.uri, experiment, proc)
    job = slurm_jobs(sweep_dir(tmp_path))[["optimizer=adamw", "optimizer=llrd"].index(label)]
    cluster.slurm("scancel", job)
    output = proc.communicate(timeout=1800)[0]  # a bound for a loaded box (see helpers.Cluster.run)
    assert proc.returncode != 0, output[-3000:]
    assert "CANCELLED" in output, output[-3000:]  # submitit reads the state from sacct and says so
    assert cluster.job_states(sweep_dir(tmp_path))[job] == "CANCELLED"
    _, folds = experiment_runs(cluster.uri, experiment)
    assert len(finished_units(folds)) < 4

    (tmp_path / "multirun").rename(tmp_path / "multirun-cancelled")  # the rerun's sweep folder stands alone
    rerun = cluster.run("ftsweep", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert set(cluster.job_states(sweep_dir(tmp_path)).values()) == {"COMPLETED"}
    parents, folds = experiment_runs(cluster.uri, experiment)
    units = finished_units(folds)
    assert len(units) == len(set(units)) == 4  # every (config, seed, fold) once, nothing twice
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}  # the cancelled parent reopened
    assert len({p.data.tags["ftsweep.config_key"] for p in parents}) == 2


def test_ctrl_c_of_a_slurm_sweep_says_its_jobs_go_on_and_they_finish(cluster, tmp_path):
    """Hydra's submitit launcher cancels nothing when its sweep is interrupted: Ctrl-C gives one line
    that says the jobs go on (and how to stop them), exit 130; the jobs then finish every fold on the
    server, and nothing is marked KILLED by the interrupted sweep (their processes are alive)."""
    experiment = unique("ctrl-c")
    proc = cluster.popen("ftsweep", *LONG, f"tracking.experiment={experiment}", *cluster.launcher(),
                         f"paths.output_root={tmp_path}", cwd=tmp_path)
    wait_midway(cluster.uri, experiment, proc)
    proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches the sweep's process; the jobs are SLURM's
    output = proc.communicate(timeout=600)[0]  # a bound for a loaded box: it leaves in seconds
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1] == (
        f"ftsweep: interrupted; the sweep's SLURM jobs go on running and logging to MLflow experiment "
        f"{experiment!r} (scancel stops them; their ids are in the job folders under hydra.sweep.dir). Rerun the "
        f"same command for the rest and the table (finished folds are reused).")
    # left midway, the jobs finish what the sweep's process no longer waits for
    states = cluster.job_states(sweep_dir(tmp_path))  # waits for the queue to drain
    assert len(states) == 2 and set(states.values()) == {"COMPLETED"}, states
    parents, folds = experiment_runs(cluster.uri, experiment)
    assert len(parents) == 2 and len(folds) == 4 and {r.info.status for r in parents + folds} == {"FINISHED"}


def test_one_configs_folds_as_slurm_array_tasks_write_one_parent_equal_to_the_local_run(cluster, tmp_path):
    """`-m 'cv.folds=[0],[1],[2]'` through sbatch: three array tasks, one per fold, into one parent run on the
    server whose folds and CV (rmse_mean, sd, OOF, oof.csv) equal the same config trained in one local
    process (one torch thread in both), to the last digit; then the plain command trains no fold."""
    experiment = unique("folds")
    args = [*FOLD_JOBS, f"tracking.experiment={experiment}"]
    on_slurm = cluster.run("ftsweep", "-m", *args, "cv.folds=[0],[1],[2]", *cluster.launcher(),
                           f"paths.output_root={tmp_path / 'slurm'}", cwd=tmp_path)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    states = cluster.job_states(sweep_dir(tmp_path / "slurm"))
    assert len(states) == 3 and set(states.values()) == {"COMPLETED"}, states  # one array task per fold
    local = cluster.run("ftsweep", *args, "trainer.num_threads=1", f"paths.output_root={tmp_path / 'local'}",
                        cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]
    (parent,), folds = experiment_runs(cluster.uri, experiment)
    (local_parent,), local_folds = experiment_runs(f"sqlite:///{tmp_path}/local/mlflow.db", experiment)
    assert parent.info.status == "FINISHED" and {f.info.status for f in folds} == {"FINISHED"}
    assert "ftsweep.folds_finished" not in parent.data.tags and parent.data.tags["ftsweep.fold_jobs"] == "true"
    assert {f.data.tags["mlflow.parentRunId"] for f in folds} == {parent.info.run_id}

    def per_fold(runs):
        return {f.data.tags["ftsweep.fold"]: (f.data.metrics["rmse_best"], f.data.metrics["rmse_last"]) for f in runs}

    assert per_fold(folds) == per_fold(local_folds) and len(folds) == 3
    for key in ("rmse_mean", "rmse_std", "rmse_last_mean", "rmse_oof", "rmse_oof_last", "n_folds_run"):
        assert parent.data.metrics[key] == local_parent.data.metrics[key], key

    def oof(uri, run_id, name):
        return pd.read_csv(MlflowClient(uri).download_artifacts(run_id, "oof.csv", str(tmp_path / name)), dtype={"id": str})

    pd.testing.assert_frame_equal(oof(cluster.uri, parent.info.run_id, "remote"),
                                  oof(f"sqlite:///{tmp_path}/local/mlflow.db", local_parent.info.run_id, "local"),
                                  check_exact=True)
    again = cluster.run("ftsweep", *args, f"tracking.uri={cluster.uri}", f"paths.output_root={tmp_path / 'again'}",
                        cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"already finished in run {parent.info.run_id}: nothing to do" in again.stdout + again.stderr
    parents_after, folds_after = experiment_runs(cluster.uri, experiment)
    assert [p.info.run_id for p in parents_after] == [parent.info.run_id] and len(folds_after) == 3
