"""A search on the cluster: trials through sbatch, the study in PostgreSQL, the runs on the
PostgreSQL-backed MLflow server, folds reported (and pruned) from inside the SLURM jobs."""

from __future__ import annotations

import os

import optuna
import pytest
from optuna.trial import TrialState

from .helpers import experiment_runs, unique
from helpers import TINY, cluster_unusable

pytestmark = pytest.mark.cluster


def test_parallel_trials_through_slurm_into_a_postgresql_study(cluster, tmp_path):
    if not cluster.study_storage:
        cluster_unusable("cluster.env has no FTSWEEP_CLUSTER_STUDY_STORAGE: rerun `make cluster-up`")
    name = unique("search")
    args = ["-m", "hydra/sweeper=optuna", "optimizer=llrd", "model.lr=tag(log, interval(1e-5, 3e-4))",
            "reinit.n=range(0, 3)", *TINY, "cv.n_folds=3", "data.max_rows=48", f"tracking.experiment={name}",
            f"hydra.sweeper.storage={cluster.study_storage}", "hydra.sweeper.n_jobs=3",
            "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", *cluster.launcher(),
            f"paths.output_root={tmp_path}"]
    first = cluster.run("ftsweep", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # the study goes on with a trial made clearly worse (a rate 1,000x too high: RMSE ~4 after its first
    # fold, against ~1): the median pruner stops it there, from inside its SLURM job, through PostgreSQL
    worse = [a.replace("interval(1e-5, 3e-4)", "interval(0.2, 0.3)") for a in args]
    again = cluster.run("ftsweep", *worse, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]

    os.environ["PGPASSFILE"] = cluster.env["PGPASSFILE"]
    trials = optuna.load_study(study_name=name, storage=cluster.study_storage).get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert trials[3].params["model.lr"] >= 0.2 and trials[3].state == TrialState.PRUNED
    assert list(trials[3].intermediate_values) == [0]  # stopped after its first fold
    assert all(t.intermediate_values for t in trials)  # reported from inside the SLURM jobs
    parents, folds = experiment_runs(cluster.uri, name)
    trial_parents = [r for r in parents if "ftsweep.trial" in r.data.tags]
    assert sorted(int(r.data.tags["ftsweep.trial"]) for r in trial_parents) == [0, 1, 2, 3]
    for trial in trials:
        (parent,) = [r for r in trial_parents if r.data.tags["ftsweep.trial"] == str(trial.number)]
        expected = ("KILLED", 1 + max(trial.intermediate_values)) if trial.state == TrialState.PRUNED else ("FINISHED", 3)
        own = [r for r in folds if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert (parent.info.status, len(own)) == expected
    assert any(r.data.tags.get("ftsweep.kind") == "search summary" for r in parents)
