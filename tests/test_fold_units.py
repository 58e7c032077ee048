"""One config's folds run as jobs of their own (cv.folds, through any launcher): one parent run whose CV
covers every fold once all have finished, equal to a run that trains them all; folds claimed, never
trained twice; a plain run afterwards trains none. The claim logic itself: test_units.py."""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ftsweep.cv import pipeline
from ftsweep.cv.pipeline import Job, run_cv
from ftsweep.tags import FOLD_JOBS_TAG, FOLD_TAG, FOLDS_FINISHED_TAG, KIND_TAG, LABEL_TAG
from ftsweep.tracking import units
from ftsweep.tracking.store import Tracker
from ftsweep.train.loop import FoldResult

from helpers import compose_cfg, run_cli

# the tiny config of the issue: 3 folds of 16 rows, 6 steps each
SMALL = ["model=tiny", "cv.n_folds=3", "trainer.epochs=1", "trainer.max_steps=6", "data.max_rows=48",
         "trainer.max_length=32", "trainer.batch_size=8"]
BOUND = 120.0  # waits on other processes wait for an event; this only ends a hung test (2 loaded cores)


def _store(uri: str, experiment: str = "ftsweep"):
    """(parents, fold runs) of the experiment, results-table runs left out."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    runs = [r for r in runs if KIND_TAG not in r.data.tags]
    return client, [r for r in runs if FOLD_TAG not in r.data.tags], [r for r in runs if FOLD_TAG in r.data.tags]


def _oof(client, run_id: str, folder) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, "oof.csv", str(folder / run_id)), dtype={"id": str})


def _fake_training(trained: list, started=None):
    """train_fold without training: each fold's predictions miss its targets by 0.1 x (fold + 1), so its
    RMSE is that; `started` (a barrier) holds the first fold until every job is inside one."""
    first = [True]

    def fake(cfg, backbone, split, runtime, sink=None, progress=None) -> FoldResult:
        fold = runtime.seed - int(cfg.trainer.seed)
        trained.append(fold)
        if started is not None and first[0]:
            first[0] = False
            started.wait(BOUND)
        pred = split.targets[split.val_rows] + 0.1 * (fold + 1)
        return FoldResult(rmse_best=0.1 * (fold + 1), rmse_last=0.1 * (fold + 1), rmse_swa=None, pred_best=pred,
                          pred_last=pred, best_step=1, steps=2, evaluations=1, seconds=0.0)

    return fake


def test_fold_jobs_one_after_another_leave_one_parent_counting_its_folds_until_the_last(tmp_path, monkeypatch,
                                                                                       migrated_store, capsys):
    """Job [2], then job [0,1] (as a basic-launcher sweep runs them): one parent that says "1 of 3" and holds
    no rmse_mean until the last fold, then the CV over all three; the table has one row, labelled as the
    config; a plain run of the config afterwards joins the parent and trains no fold."""
    from ftsweep.cv.summary import print_summary
    from ftsweep.sweep.table import build_table, fold_frame

    trained: list[int] = []
    monkeypatch.setattr(pipeline, "train_fold", _fake_training(trained))
    overrides = [*SMALL, "cv.folds=[2]"]
    first = run_cv(compose_cfg(overrides, tmp_path), Job(overrides, resume=True))
    tracker = Tracker(migrated_store, "ftsweep")
    parent = tracker.get_run(first.parent_run_id)
    assert (first.finished, first.cv, parent.info.status) == ("1 of 3", None, "FINISHED")
    assert parent.data.tags[FOLDS_FINISHED_TAG] == "1 of 3" and "rmse_mean" not in parent.data.metrics
    assert parent.data.params["cv.folds"] == "None"  # the parent records the config, every fold
    print_summary(compose_cfg(overrides, tmp_path), first)
    assert "1 of 3 folds of this config finished: its CV (rmse_mean, OOF) is written" in capsys.readouterr().out
    second = run_cv(compose_cfg([*SMALL, "cv.folds=[0,1]"], tmp_path), Job([*SMALL, "cv.folds=[0,1]"], resume=True))
    assert second.parent_run_id == first.parent_run_id and sorted(trained) == [0, 1, 2]
    parent = tracker.get_run(first.parent_run_id)
    assert FOLDS_FINISHED_TAG not in parent.data.tags and parent.data.tags[FOLD_JOBS_TAG] == "true"
    assert parent.data.metrics["rmse_mean"] == second.cv["rmse_mean"] == pytest.approx(0.2, abs=1e-12)
    assert parent.data.metrics["n_folds_run"] == 3 and sorted(second.folds) == [0, 1]
    print_summary(compose_cfg(overrides, tmp_path), second)
    assert "all 3 folds (trained by this job and others): mean RMSE 0.2000 ± 0.1000" in capsys.readouterr().out
    table = build_table(fold_frame(tracker))
    assert list(table["label"]) == [" ".join(SMALL)] and list(table["folds"]) == [3]
    plain = run_cv(compose_cfg(SMALL, tmp_path), Job(SMALL, resume=False, join_fold_jobs=True))
    assert plain.parent_run_id == first.parent_run_id and sorted(trained) == [0, 1, 2]  # nothing trained again
    assert plain.cv["rmse_mean"] == second.cv["rmse_mean"] and sorted(plain.folds) == [0, 1, 2]


def _job(uri_root, folds, store_locked, started, trained):
    """One fold job in a process of its own: claims folds of the shared config, trains them (fakes) and says which."""
    try:
        if not store_locked:  # as on a server store: the unit's claims, no file lock
            units.store_lock = _no_lock
        mine: list[int] = []
        pipeline.train_fold = _fake_training(mine, started)
        overrides = [*SMALL, f"cv.folds={folds}"]
        result = run_cv(compose_cfg(overrides, uri_root), Job(overrides, resume=True))
        trained.put((folds, mine, result.cv is not None))
    except BaseException:
        trained.put((folds, traceback.format_exc(), None))  # the parent shows it
        raise


@contextlib.contextmanager
def _no_lock(uri):
    yield False


@pytest.mark.parametrize("store", ["sqlite", "server claims"])
def test_two_jobs_at_once_asked_for_overlapping_folds_train_each_fold_once(tmp_path, migrated_store, store):
    """Jobs for folds [0, 1, 2] and [1, 2] that really run at once: each holds its first fold until the other
    is inside one too (the first job fold 0, the second fold 1, which the first then leaves to it). Whoever
    takes fold 2, each fold is trained once, and the CV over all three is written once."""
    ctx = multiprocessing.get_context("spawn")  # a clean child: a forked xdist worker carries whatever ran before
    started, trained = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(tmp_path, folds, store == "sqlite", started, trained))
             for folds in ("[0,1,2]", "[1,2]")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(BOUND)
    done = dict((folds, mine) for folds, mine, _ in (trained.get(timeout=BOUND) for _ in procs))
    assert [p.exitcode for p in procs] == [0, 0], done
    assert sorted(done["[0,1,2]"] + done["[1,2]"]) == [0, 1, 2] and done["[0,1,2]"][0] == 0 and done["[1,2]"][0] == 1
    client, parents, folds = _store(migrated_store)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(int(f.data.tags[FOLD_TAG]) for f in folds) == [0, 1, 2] and {f.info.status for f in folds} == {"FINISHED"}
    parent = parents[0].info.run_id
    assert [m.value for m in client.get_metric_history(parent, "rmse_mean")] == [pytest.approx(0.2, abs=1e-12)]
    oof = _oof(client, parent, tmp_path)
    expected = np.sqrt(np.mean((0.1 * (oof["fold"] + 1)) ** 2))
    assert len(oof) == 48 and parents[0].data.metrics["rmse_oof"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_a_fold_parallel_sweep_equals_the_sequential_run_and_a_plain_rerun_trains_nothing(tmp_path):
    """The issue's command: `-m 'cv.folds=[0],[1],[2]' hydra/launcher=joblib hydra.launcher.n_jobs=2` gives one
    FINISHED parent whose folds, rmse_mean, sd, OOF and oof.csv equal those of the run that trains the three
    folds in one process (CPU, one thread, same seeds), to the last digit; the table's row is labelled as the
    config; then the plain command (no -m, no cv.folds) reuses every fold and trains none."""
    reference = run_cv(compose_cfg(SMALL, tmp_path / "seq"))
    seq_client, (seq_parent,), _ = _store(f"sqlite:///{tmp_path}/seq/mlflow.db")
    root = tmp_path / "par"
    uri = f"sqlite:///{root}/mlflow.db"
    common = [*SMALL, f"paths.output_root={root}"]  # the store: <root>/mlflow.db
    out = run_cli("ftsweep", "-m", *common, "cv.folds=[0],[1],[2]", "hydra/launcher=joblib",
                  "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client, parents, folds = _store(uri)
    assert [p.info.status for p in parents] == ["FINISHED"] and len(folds) == 3
    parent = parents[0]
    per_fold = {int(f.data.tags[FOLD_TAG]): f.data.metrics["rmse_best"] for f in folds}
    assert per_fold == {fold: res.rmse_best for fold, res in reference.folds.items()}
    for key in ("rmse_mean", "rmse_std", "rmse_last_mean", "rmse_last_std", "rmse_oof", "rmse_oof_last"):
        assert parent.data.metrics[key] == seq_parent.data.metrics[key] == reference.cv[key], key
    pd.testing.assert_frame_equal(_oof(client, parent.info.run_id, tmp_path),
                                  _oof(seq_client, seq_parent.info.run_id, tmp_path), check_exact=True)
    label = " ".join(common)  # the config's overrides, as its plain run's row is labelled
    assert {f.data.tags[LABEL_TAG] for f in folds} == {label} and f"| {label} | 3 |" in out.stdout
    assert "cv.folds=" not in out.stdout.split("Results of sweep")[1].split("\n\n")[1]  # the table: one row
    again = run_cli("ftsweep", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, parents_after, folds_after = _store(uri)
    assert [p.info.run_id for p in parents_after] == [parent.info.run_id] and len(folds_after) == 3
    assert f"already finished in run {parent.info.run_id}: nothing to do" in again.stderr + again.stdout
    assert f"mean RMSE {reference.cv['rmse_mean']:.4f} ± {reference.cv['rmse_std']:.4f}" in again.stdout
