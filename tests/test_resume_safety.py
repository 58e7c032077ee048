"""Resume never mixes results: data changes start fresh, live units are left to their owner,
dead owners' runs are closed, and one SQLite store survives many processes at once."""

from __future__ import annotations

import fcntl
import multiprocessing
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ftsweep import locks
from ftsweep.cv.pipeline import Job, load_data, run_cv
from ftsweep.data.demo import generate
from ftsweep.locks import (
    HEARTBEAT_TAG,
    LEASE_SECONDS,
    OWNER_TAG,
    _machine,
    _start_time,
    owner_alive,
    owner_tags,
    owner_token,
)
from ftsweep.tracking import units
from ftsweep.tracking.recorder import RunRecorder
from ftsweep.tracking.store import Tracker

from helpers import cli_env


def _csv(tmp_path, name="train.csv", ids=None):
    frame = generate(64, words_per_passage=12, seed=5)
    if ids is not None:
        frame["id"] = ids
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _runs(uri, experiment):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    runs = [r for r in runs if r.data.tags.get("ftsweep.kind") != "table"]
    return client, [r for r in runs if "ftsweep.fold" not in r.data.tags], [r for r in runs if "ftsweep.fold" in r.data.tags]


def _oof(client, run_id, tmp_path):
    return pd.read_csv(client.download_artifacts(run_id, "oof.csv", str(tmp_path / run_id)), dtype={"id": str})


def test_changed_data_starts_fresh_instead_of_reusing_folds(make_cfg, migrated_store, tmp_path, caplog):
    caplog.set_level("INFO", logger="ftsweep")
    path = _csv(tmp_path)
    cfg = make_cfg("data=commonlit", f"data.path={path}", "data.max_rows=null", "tracking.experiment=e")
    # a run that stopped after fold 0 (cv.folds is not part of the unit: the same unit, half done)
    partial = run_cv(make_cfg("data=commonlit", f"data.path={path}", "data.max_rows=null", "tracking.experiment=e",
                              "cv.folds=[0]"), Job(resume=True))
    assert run_cv(cfg, Job(resume=True)).parent_run_id == partial.parent_run_id  # same data: resumed, fold 0 reused
    frame = pd.read_csv(path, dtype=str)
    frame.loc[::5, "target"] = (frame.loc[::5, "target"].astype(float) + 1.5).astype(str)
    frame.to_csv(path, index=False)
    caplog.clear()
    fresh = run_cv(cfg, Job(resume=True))
    assert fresh.parent_run_id != partial.parent_run_id
    assert "the data changed since run" in caplog.text and "starting fresh" in caplog.text
    client, parents, children = _runs(cfg.tracking.uri, "e")
    assert len([c for c in children if c.data.tags["mlflow.parentRunId"] == fresh.parent_run_id]) == 2
    oof = _oof(client, fresh.parent_run_id, tmp_path)
    assert len(oof) == 64 and oof["id"].is_unique  # every row scored once, by a fold of the new data
    new_targets = pd.read_csv(path, dtype={"id": str}).set_index("id")["target"]
    assert oof.set_index("id")["target"].sort_index().equals(new_targets.sort_index())
    tags = {p.info.run_id: p.data.tags for p in parents}
    assert tags[fresh.parent_run_id]["ftsweep.data_fingerprint"] != tags[partial.parent_run_id]["ftsweep.data_fingerprint"]
    # and a rerun on the new data is a no-op again
    caplog.clear()
    assert run_cv(cfg, Job(resume=True)).parent_run_id == fresh.parent_run_id and "already finished" in caplog.text


def test_ids_that_look_like_numbers_come_out_as_written(make_cfg, migrated_store, tmp_path):
    ids = [f"{i:05d}" for i in range(63)] + ["0.10"]
    path = _csv(tmp_path, ids=ids)
    cfg = make_cfg("data=commonlit", f"data.path={path}", "data.max_rows=null")
    result = run_cv(cfg)
    client = MlflowClient(cfg.tracking.uri)
    oof = _oof(client, result.parent_run_id, tmp_path)
    folds = pd.read_csv(client.download_artifacts(result.parent_run_id, "folds.csv", str(tmp_path)), dtype=str)
    assert sorted(oof["id"]) == sorted(ids) and folds["id"].tolist() == ids
    _, _, children = _runs(cfg.tracking.uri, "ftsweep")
    preds = pd.read_csv(client.download_artifacts(children[0].info.run_id, "predictions.csv", str(tmp_path / "p")), dtype=str)
    assert set(preds["id"]) <= set(ids) and preds["id"].str.len().eq(5).sum() >= len(preds) - 1


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_owner_keeps_its_unit_and_a_dead_owners_runs_are_closed(make_cfg, migrated_store, sleeper):
    half = run_cv(make_cfg("cv.folds=[0]"), Job(resume=True))
    cfg = make_cfg()
    tracker = Tracker(cfg.tracking.uri, "ftsweep")
    key = tracker.get_run(half.parent_run_id).data.tags["ftsweep.config_key"]
    # a process (the sleeper) holds the unit: parent RUNNING, fold 1 RUNNING
    token = f"{_machine()}:{sleeper.pid}:{_start_time(sleeper.pid)}"
    tracker.reopen(half.parent_run_id, {OWNER_TAG: token})
    stale = tracker.start_run("fold 1", {"ftsweep.config_key": key, "ftsweep.fold": "1", OWNER_TAG: token},
                              parent_id=half.parent_run_id)
    held = run_cv(cfg, Job(resume=True))
    assert held.held_by == token and not held.folds
    assert tracker.get_run(stale).info.status == "RUNNING"  # a live owner's run is not touched
    sleeper.kill()
    sleeper.wait()  # kill -9: the owner is gone, its runs still say RUNNING
    taken = run_cv(cfg, Job(resume=True))
    assert taken.parent_run_id == half.parent_run_id and sorted(taken.folds) == [0, 1]
    assert tracker.get_run(stale).info.status == "KILLED"
    assert "is gone; the unit was taken over" in tracker.get_run(stale).data.tags["ftsweep.error"]
    _, parents, children = _runs(cfg.tracking.uri, "ftsweep")
    finished = sorted(c.data.tags["ftsweep.fold"] for c in children if c.info.status == "FINISHED")
    assert finished == ["0", "1"] and [p.info.status for p in parents] == ["FINISHED"]


def test_on_a_server_store_a_closed_unit_is_released_and_resumed_by_the_same_process(make_cfg, migrated_store,
                                                                                    monkeypatch):
    """Claimed as on a server store (no file lock): each of the unit's sections releases its claim as it
    ends, so the same live process (a serial sweep's next job) resumes the unit and nothing stays held."""
    @contextmanager
    def no_lock(uri):
        yield False

    monkeypatch.setattr(units, "store_lock", no_lock)
    half = run_cv(make_cfg("cv.folds=[0]"), Job(resume=True))
    assert half.cv is None and half.finished == "1 of 2"
    whole = run_cv(make_cfg(), Job(resume=True))
    assert whole.held_by is None and whole.parent_run_id == half.parent_run_id and sorted(whole.folds) == [0, 1]
    tracker = Tracker(migrated_store, "ftsweep")
    run = tracker.get_run(whole.parent_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["rmse_mean"] == whole.cv["rmse_mean"]
    prefix = units.claim_prefix(tracker.experiment_id, run.data.tags["ftsweep.config_key"])
    generation, holder = units.latest_claim(tracker, prefix)
    assert holder is None and generation % 2 == 0  # every claim released: 1 by 2, 3 by 4, ...


def test_owner_liveness_on_this_machine_and_elsewhere():
    mine = owner_tags()
    assert owner_alive(mine)
    assert not owner_alive({OWNER_TAG: f"{_machine()}:999999999:1"})  # no such pid
    assert not owner_alive({})  # runs from before leases existed: nobody holds them
    remote = {OWNER_TAG: "node7/abcd:1234:99", HEARTBEAT_TAG: str(time.time() - 10)}
    assert owner_alive(remote)
    assert not owner_alive({**remote, HEARTBEAT_TAG: str(time.time() - 600)})  # its heartbeat lapsed


def _wait_for_tag(tracker, run_id, tag, value, seconds=10.0):
    deadline = time.time() + seconds
    while (seen := tracker.get_run(run_id).data.tags.get(tag)) != value:
        assert time.time() < deadline, f"{tag} is still {seen!r}, never renewed to {value!r}"
        time.sleep(0.01)


def test_a_remote_owner_keeps_its_unit_while_it_beats_and_loses_it_after_the_lease(make_cfg, migrated_store,
                                                                                    monkeypatch):
    """Across machines liveness is the heartbeat: renewed, the unit stays held past LEASE_SECONDS;
    LEASE_SECONDS after the last beat it is taken over. The clock is advanced, not waited for."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(locks, "clock", lambda: now[0])
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.02)
    cfg = make_cfg()
    assert cfg.tracking.uri == migrated_store
    recorder = RunRecorder(cfg, load_data(cfg), [0, 1], "lease")
    assert recorder.claim("job", [], {}, resume=True) is None
    tracker, parent, key = recorder.tracker, recorder.parent, recorder.key
    owner = tracker.get_run(parent).data.tags[OWNER_TAG]
    with recorder.recording():  # the owner's heartbeat thread runs while the block does
        fold = tracker.start_run("fold 1", {**recorder.tags, "ftsweep.fold": "1"}, parent_id=parent)
        monkeypatch.setattr(locks, "_machine", lambda: "node7/0000")  # from here on, judged from another machine
        for _ in range(4):  # 240 s in all: past the lease of the claim's own beat
            now[0] += 60
            _wait_for_tag(tracker, parent, HEARTBEAT_TAG, f"{now[0]:.0f}")
            held = units.inspect(tracker, key, [1], 2)
            assert (held.state, held.parent_id, held.holder) == ("held", parent, owner)
    # the block is left without finishing the run: the owner went silent, as on a lost node
    assert tracker.get_run(parent).data.tags[HEARTBEAT_TAG] == f"{now[0]:.0f}"
    last = now[0]

    def claim():
        return units.claim(tracker, key, [1], 2, "job", {"ftsweep.config_key": key}, resume=True)

    now[0] = last + LEASE_SECONDS - 1
    early = claim()
    assert (early.state, early.parent_id, early.holder) == ("held", parent, owner)
    assert tracker.get_run(fold).info.status == "RUNNING"
    now[0] = last + LEASE_SECONDS
    taken = claim()
    assert (taken.state, taken.parent_id, taken.created, taken.owner) == ("run", parent, False, True)
    run = tracker.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags[OWNER_TAG] == owner_token() != owner
    assert run.data.tags[OWNER_TAG].startswith("node7/0000:") and run.data.tags[HEARTBEAT_TAG] == f"{now[0]:.0f}"
    stale = tracker.get_run(fold)
    assert stale.info.status == "KILLED" and stale.data.tags["ftsweep.error"].endswith("is gone; the unit was taken over")


def _open_store(uri, barrier, errors):
    try:
        barrier.wait()
        Tracker(uri, "together")
    except Exception as exc:  # noqa: BLE001
        errors.put(f"{type(exc).__name__}: {exc}")


def test_many_processes_create_one_new_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(uri, barrier, errors)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert errors.empty(), errors.get()
    assert all(p.exitcode == 0 for p in procs)
    tables = [r[0] for r in sqlite3.connect(tmp_path / "new" / "mlflow.db").execute(
        "select name from sqlite_master where type='table'")]
    assert not [t for t in tables if t.startswith("_alembic_tmp")]
    assert len(MlflowClient(uri).search_experiments(filter_string="name = 'together'")) == 1


def _waiting_on(lock: Path, pids: set[int]) -> bool:
    """Are all of `pids` blocked on the flock of `lock` (the kernel's list of locks and their waiters)?"""
    inode = f":{lock.stat().st_ino} "
    waiting = {int(line.split()[5]) for line in Path("/proc/locks").read_text().splitlines()
               if " -> FLOCK " in line and inode in line}
    return pids <= waiting


@pytest.mark.slow
def test_two_sweeps_at_once_on_one_store_run_each_unit_once(tmp_path, migrated_store):
    """Two sweeps of the same two units that really run side by side: both are held at the store's lock
    until each has started and is waiting for it, then let go together. They share each unit's parent
    and claim its folds: every fold is trained once, by one sweep or the other, both sweeps train (the
    second to claim finds the first fold held and takes the next), and each unit's CV is written once."""
    grid = ["-m", "model=tiny", "cv.n_folds=2", "data.max_rows=64", "trainer.max_steps=16", "trainer.batch_size=2",
            "trainer.max_length=32", "optimizer=adamw,llrd", "tracking.experiment=twice", f"paths.output_root={tmp_path}"]
    lock = tmp_path / "mlflow.db.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        sweeps = [subprocess.Popen(_cli(grid), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(2)]
        # an event, not a time: both wait for the lock at their first claim of the store; the bound only
        # stops a hung test (two children importing torch, Hydra and MLflow on two loaded cores)
        deadline = time.time() + 240
        while not _waiting_on(lock, {s.pid for s in sweeps}):
            assert time.time() < deadline and all(s.poll() is None for s in sweeps), "the sweeps never reached the lock"
            time.sleep(0.05)
        fcntl.flock(held, fcntl.LOCK_UN)
    said = ""
    for sweep in sweeps:
        out, err = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, err[-2000:]
        said += out + err
    _, parents, children = _runs(migrated_store, "twice")
    units = [(c.data.tags["ftsweep.config_key"], c.data.tags["ftsweep.fold"]) for c in children]
    assert len(units) == len(set(units)) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    trainers = {int(c.data.tags[OWNER_TAG].rsplit(":", 2)[1]) for c in children}
    assert trainers == {s.pid for s in sweeps}, said[-3000:]  # both sweeps trained folds
    client = MlflowClient(migrated_store)
    assert [len(client.get_metric_history(p.info.run_id, "rmse_mean")) for p in parents] == [1, 1]


def _cli(args):
    import sys

    return [sys.executable, "-m", "ftsweep", *args]


def test_a_job_that_loses_the_dataset_insert_race_links_the_existing_row(migrated_store, monkeypatch):
    """Parallel jobs log one dataset: the second insert of (experiment, name, digest) fails on
    a server store (seen under SLURM on PostgreSQL); the job must link the row, not fail."""
    tracker = Tracker(migrated_store, "race")
    frame = generate(8, words_per_passage=5, seed=1)
    first, second = tracker.start_run("a", {}), tracker.start_run("b", {})
    tracker.log_dataset(first, frame, "/data/train.csv", "0123456789abcdef", "train", "target")
    real, calls = tracker.client.log_inputs, []

    def lose_once(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:
            raise RuntimeError('(psycopg2.errors.UniqueViolation) duplicate key value violates unique '
                               'constraint "dataset_pk"')
        return real(run_id, datasets=datasets)

    monkeypatch.setattr(tracker.client, "log_inputs", lose_once)
    tracker.log_dataset(second, frame, "/data/train.csv", "0123456789abcdef", "train", "target")
    assert calls == [second, second]
    digests = [[d.dataset.digest for d in tracker.get_run(r).inputs.dataset_inputs] for r in (first, second)]
    assert digests == [["0123456789abcdef"], ["0123456789abcdef"]]


def test_other_errors_are_not_retried(migrated_store, monkeypatch):
    tracker = Tracker(migrated_store, "race")
    run, calls = tracker.start_run("a", {}), []

    def broken(run_id, datasets):
        calls.append(run_id)
        raise RuntimeError("INVALID_PARAMETER_VALUE: schema too long")

    monkeypatch.setattr(tracker.client, "log_inputs", broken)
    with pytest.raises(RuntimeError, match="schema too long"):
        tracker.log_dataset(run, generate(4, words_per_passage=5, seed=1), "/d.csv", "ab" * 8, "d", "target")
    assert calls == [run]


def test_runs_are_found_by_tag_values_with_quotes(migrated_store):
    tracker = Tracker(migrated_store, "quotes")
    run = tracker.start_run("a", {"ftsweep.study": "it's"})
    assert [r.info.run_id for r in tracker.runs_tagged("ftsweep.study", "it's")] == [run]
