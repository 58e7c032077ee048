"""tracking/units.py on a real SQLite store, without training: which process may work in a unit (one
config, data and seed) and which may train each of its folds, when the unit is finished, how a job
leaves it, and what a dead owner leaves behind."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from ftsweep import locks
from ftsweep.locks import owner_token
from ftsweep.tags import CONFIG_KEY_TAG, FOLD_TAG, FOLDS_FINISHED_TAG, HEARTBEAT_TAG, OWNER_TAG
from ftsweep.tracking import units
from ftsweep.tracking.store import Tracker

from helpers import mlflow_server

KEY = "unit-key"
TAGS = {CONFIG_KEY_TAG: KEY}


@pytest.fixture
def tracker(migrated_store) -> Tracker:
    return Tracker(migrated_store, "units")


@functools.lru_cache(maxsize=1)
def _dead_owner() -> str:
    """An owner token of this machine whose process has ended (its pid's start time tells a reuse apart)."""
    child = subprocess.run([sys.executable, "-c", "from ftsweep.locks import owner_token; print(owner_token())"],
                           capture_output=True, text=True, check=True)
    return child.stdout.strip()


def _claim(tracker: Tracker, folds=(0, 1), n_folds: int = 2, resume: bool = True) -> units.Claim:
    return units.claim(tracker, KEY, list(folds), n_folds, "row", TAGS, resume)


def _fold_run(tracker: Tracker, parent: str, fold: int, status: str = "FINISHED", owner: str | None = None) -> str:
    """A fold run under `parent`: FINISHED, or RUNNING under `owner` (a process that holds the fold)."""
    tags = {**TAGS, FOLD_TAG: str(fold), **({OWNER_TAG: owner, HEARTBEAT_TAG: "0"} if owner else {})}
    run = tracker.start_run(f"fold {fold}", tags, parent_id=parent)
    if status != "RUNNING":
        tracker.finish(run, status)
    return run


def test_a_new_unit_is_claimed_by_a_new_parent_owned_by_this_process(tracker):
    assert units.inspect(tracker, KEY, [0, 1], 2).state == "run"
    mine = _claim(tracker)
    assert (mine.state, mine.created, mine.owner, mine.previous) == ("run", True, True, None)
    parent = tracker.get_run(mine.parent_id)
    assert parent.info.status == "RUNNING" and parent.data.tags[OWNER_TAG] == owner_token()
    assert HEARTBEAT_TAG in parent.data.tags


def test_jobs_join_a_live_parent_and_each_fold_goes_to_one_of_them(tracker, sleeper_token):
    """Fold jobs share the config's one parent: a second job joins it (no second parent, nothing written
    on it) and claims folds; a fold a live process trains is held by it, a finished one is reused."""
    first = _claim(tracker)
    joined = _claim(tracker)
    assert (joined.state, joined.parent_id, joined.created, joined.owner) == ("run", first.parent_id, False, False)
    mine = units.claim_fold(tracker, KEY, first.parent_id, 0, TAGS, scoped=False)
    assert mine.state == "mine" and tracker.get_run(mine.run_id).data.tags[OWNER_TAG] == owner_token()
    other = _fold_run(tracker, first.parent_id, 1, "RUNNING", owner=sleeper_token)  # another live process's fold
    assert units.claim_fold(tracker, KEY, first.parent_id, 1, TAGS, scoped=False).holder == sleeper_token
    held = _claim(tracker, [1])
    assert (held.state, held.parent_id, held.holder) == ("held", first.parent_id, sleeper_token)
    tracker.finish(other, "FINISHED")
    done = units.claim_fold(tracker, KEY, first.parent_id, 1, TAGS, scoped=False)
    assert (done.state, done.run.info.run_id) == ("done", other)
    assert len([r for r in tracker.runs_tagged(CONFIG_KEY_TAG, KEY) if FOLD_TAG not in r.data.tags]) == 1


def test_a_fold_whose_owner_died_is_killed_and_trained_again(tracker):
    parent = _claim(tracker).parent_id
    stale = _fold_run(tracker, parent, 1, "RUNNING", owner=_dead_owner())
    again = units.claim_fold(tracker, KEY, parent, 1, TAGS, scoped=False)
    assert again.state == "mine" and again.run_id != stale
    assert tracker.get_run(stale).info.status == "KILLED"
    assert "is gone; the unit was taken over" in tracker.get_run(stale).data.tags["ftsweep.error"]


def test_a_unit_with_every_fold_finished_is_finished_and_one_fold_short_is_resumed(tracker):
    parent = _claim(tracker).parent_id
    _fold_run(tracker, parent, 0)
    tracker.finish(parent, "FINISHED")
    assert units.inspect(tracker, KEY, [0], 2).state == "finished"
    resumed = units.inspect(tracker, KEY, [0, 1], 2)
    assert (resumed.state, resumed.parent_id, sorted(resumed.previous.finished_folds)) == ("run", parent, [0])


def test_a_dead_owners_unit_is_taken_over_and_its_running_runs_killed(tracker):
    dead = {OWNER_TAG: _dead_owner(), HEARTBEAT_TAG: "0"}
    parent = tracker.start_run("row", {**TAGS, **dead})
    fold = tracker.start_run("fold 0", {**TAGS, FOLD_TAG: "0"}, parent_id=parent)  # an older ftsweep: no owner
    taken = _claim(tracker)
    assert (taken.state, taken.parent_id, taken.created, taken.owner) == ("run", parent, False, True)  # reopened
    assert tracker.get_run(parent).data.tags[OWNER_TAG] == owner_token()
    assert tracker.get_run(fold).info.status == "KILLED"


def test_without_resume_a_finished_unit_runs_again_under_a_new_parent(tracker):
    old = _claim(tracker, [0]).parent_id
    _fold_run(tracker, old, 0)
    tracker.finish(old, "FINISHED")
    fresh = _claim(tracker, [0], resume=False)
    assert fresh.state == "run" and fresh.created and fresh.parent_id != old
    assert units.claim_fold(tracker, KEY, fresh.parent_id, 0, TAGS, scoped=True).state == "mine"  # its own folds only


def test_close_orphans_leaves_tables_and_live_runs_alone(tracker, sleeper_token):
    live = tracker.start_run("row", {**TAGS, OWNER_TAG: owner_token(), HEARTBEAT_TAG: "0"})
    table = tracker.start_run("results table", {})  # no owner tag: not ftsweep's to close
    orphan = tracker.start_run("row", {CONFIG_KEY_TAG: "other", OWNER_TAG: _dead_owner()})
    # a parent whose owner left (or died) while another job trains a fold of it: alive through that fold
    shared = tracker.start_run("row", {CONFIG_KEY_TAG: "shared", OWNER_TAG: ""})
    working = _fold_run(tracker, shared, 0, "RUNNING", owner=sleeper_token)
    dead_fold = _fold_run(tracker, shared, 1, "RUNNING", owner=_dead_owner())
    units.close_orphans(tracker)
    statuses = [tracker.get_run(r).info.status for r in (live, table, orphan, shared, working, dead_fold)]
    assert statuses == ["RUNNING", "RUNNING", "KILLED", "RUNNING", "RUNNING", "KILLED"]


def test_the_last_job_to_leave_writes_the_cv_and_the_others_say_how_many_folds_are_finished(tracker, sleeper_token):
    """settle(): folds missing and nobody training them: the parent closes with its count (no rmse_mean);
    folds missing that a live job trains: the owner lets go (the parent lives on through that job's fold);
    every fold finished: this process holds the parent again and writes the CV."""
    parent = _claim(tracker, [0], n_folds=3).parent_id
    _fold_run(tracker, parent, 0)
    assert units.settle(tracker, KEY, parent, 3, scoped=False) == ("partial", 1)
    run = tracker.get_run(parent)
    assert (run.info.status, run.data.tags[FOLDS_FINISHED_TAG]) == ("FINISHED", "1 of 3")
    assert run.data.metrics == {"n_folds_run": 1.0}  # no rmse_mean: not a CV mean
    assert units.inspect(tracker, KEY, [0], 3).state == "finished"
    again = _claim(tracker, [1, 2], n_folds=3)
    assert (again.parent_id, again.owner) == (parent, True)  # reopened
    _fold_run(tracker, parent, 1)
    training = _fold_run(tracker, parent, 2, "RUNNING", owner=sleeper_token)
    assert units.settle(tracker, KEY, parent, 3, scoped=False) == ("left", 2)
    run = tracker.get_run(parent)
    assert (run.info.status, run.data.tags[OWNER_TAG], run.data.tags[FOLDS_FINISHED_TAG]) == ("RUNNING", "", "2 of 3")
    units.close_orphans(tracker)
    assert tracker.get_run(parent).info.status == "RUNNING"
    tracker.finish(training, "FINISHED")  # that job's last fold: it settles the unit
    assert units.settle(tracker, KEY, parent, 3, scoped=False) == ("aggregate", 3)
    assert tracker.get_run(parent).data.tags[OWNER_TAG] == owner_token()
    assert units.inspect(tracker, KEY, [0, 1, 2], 3).state == "run"  # not written yet: this process writes it


def test_a_job_leaving_while_a_live_owner_holds_the_parent_leaves_it_to_the_owner(tracker, sleeper_token):
    parent = tracker.start_run("row", {**TAGS, OWNER_TAG: sleeper_token, HEARTBEAT_TAG: "0"})
    _fold_run(tracker, parent, 0)
    _fold_run(tracker, parent, 1)
    assert units.settle(tracker, KEY, parent, 2, scoped=False) == ("left", 2)
    held = units.inspect(tracker, KEY, [0, 1], 2)
    assert (held.state, held.holder) == ("held", sleeper_token)  # every fold finished: its owner writes the CV


@pytest.fixture
def sleeper_token():
    """The owner token of a live process of this machine (not this one)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield f"{locks._machine()}:{proc.pid}:{locks._start_time(proc.pid)}"
    proc.kill()
    proc.wait()


# Server stores: no file lock spans the clients, so a unit's critical section belongs to the process that
# creates its claim, a hidden experiment `<unit>#<n>`. Here a SQLite store stands in for the server (same
# unique experiment names, no lock), and the races below run on a real `mlflow server` too.

@pytest.fixture
def server_semantics(monkeypatch):
    """Claims on this test's SQLite store are made as on a server store: without the file lock."""
    @contextlib.contextmanager
    def no_lock(uri):
        yield False

    monkeypatch.setattr(units, "store_lock", no_lock)


def _claim_name(tracker: Tracker, generation: int) -> str:
    return f"{units.claim_prefix(tracker.experiment_id, KEY)}{generation}"


def test_on_a_server_store_a_section_is_a_hidden_claim_released_as_it_ends(tracker, server_semantics):
    mine = _claim(tracker)
    claims = tracker.claims(units.claim_prefix(tracker.experiment_id, KEY))
    assert claims[_claim_name(tracker, 1)][OWNER_TAG] == owner_token()
    assert OWNER_TAG not in claims[_claim_name(tracker, 2)]  # the release: nobody holds the unit now
    assert units.latest_claim(tracker, units.claim_prefix(tracker.experiment_id, KEY)) == (2, None)
    assert tracker.experiments() == [("units", tracker.experiment_id)]  # deleted: not in the UI's list
    joined = _claim(tracker)  # the section's next claim: 3, released by 4
    assert (joined.state, joined.parent_id, joined.owner) == ("run", mine.parent_id, False)
    assert set(tracker.claims(units.claim_prefix(tracker.experiment_id, KEY))) == {_claim_name(tracker, g)
                                                                                   for g in (1, 2, 3, 4)}


def test_a_claim_whose_holder_died_inside_the_section_is_taken_over(tracker, server_semantics):
    """The holder of claim 1 was killed before it released it."""
    assert tracker.create_claim(_claim_name(tracker, 1), {OWNER_TAG: _dead_owner(), HEARTBEAT_TAG: "0"})
    taken = _claim(tracker)
    assert (taken.state, taken.created) == ("run", True)
    assert tracker.claims(units.claim_prefix(tracker.experiment_id, KEY))[_claim_name(tracker, 2)][OWNER_TAG] == \
        owner_token()


def test_a_remote_claim_is_held_while_its_lease_runs_and_taken_over_after(tracker, server_semantics, monkeypatch):
    """A claim on another machine that was never released: held for LEASE_SECONDS after its heartbeat (a
    partitioned owner keeps it that long), then taken over. The clock is advanced, not waited for."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(locks, "clock", lambda: now[0])
    remote = "node7/abcd:1234:99"
    prefix = units.claim_prefix(tracker.experiment_id, KEY)
    assert tracker.create_claim(_claim_name(tracker, 1), {OWNER_TAG: remote, HEARTBEAT_TAG: locks.beat()})
    now[0] += locks.LEASE_SECONDS - 1
    assert units.latest_claim(tracker, prefix) == (1, remote)
    now[0] += 1
    assert units.latest_claim(tracker, prefix) == (1, None)
    assert _claim(tracker).created
    assert tracker.claims(prefix)[_claim_name(tracker, 2)][OWNER_TAG] == owner_token()


DELAY = 3.0  # one claimer's writes land this late (a slow or restarting server): longer than the old 2 s settle
SKEW = 60.0  # one claimer's clock runs this far behind (inside the 180 s lease, which a clock must keep to)
BOUND = 90.0  # waits on other processes wait for an event; this only ends a hung test (2 loaded cores)
_DECIDING = ("create_experiment", "create_run", "update_run")  # a claim's first write (old code: a parent run)
_WRITES = (*_DECIDING, "set_tag", "delete_experiment")


def _gated(client, role: int, scenario: str, looked, turn):
    """Replace the client's writes so that claimer 0's claim lands first and claimer 1's after it, both
    made after every claimer has looked at the store. "delay": claimer 1 sends first, but its writes up to
    that deciding one land DELAY s late (a run stamped when sent, as MLflow's client does; the later ones
    are serialised by the unit's section, late or not). "skew": claimer 1 writes
    once claimer 0's first write landed, stamped by a clock SKEW s behind. "together": all at once.
    Returns what puts the client's own writes back."""
    first = [True]
    real_writes = {name: getattr(client, name) for name in _WRITES}

    def wrap(name, real):
        def write(*args, **kwargs):
            if name == "create_run" and role == 1:
                kwargs["start_time"] = int(locks.clock() * 1000)
            opening = first[0] and name in _DECIDING
            if opening:
                first[0] = False
                assert looked.wait(BOUND) is not None
                if (scenario, role) in (("delay", 0), ("skew", 1)):
                    assert turn.wait(BOUND)
                if (scenario, role) == ("delay", 1):
                    turn.set()  # its write is on the way
            if (scenario, role) == ("delay", 1) and (opening or first[0]):
                time.sleep(DELAY)  # the delay under test (the write's latency), not a wait for an event
            out = real(*args, **kwargs)
            if opening and (scenario, role) == ("skew", 0):
                turn.set()
            return out
        return write

    for name, real in real_writes.items():
        setattr(client, name, wrap(name, real))
    return lambda: [setattr(client, name, real) for name, real in real_writes.items()]


def _claimer(uri, experiment, role, scenario, sync, results):
    looked, turn, decided, claimed = sync
    if scenario == "skew":  # two machines: liveness is judged by heartbeats and each one's clock
        locks._machine = lambda: f"node{role}/0"
        if role == 1:
            locks.clock = lambda: time.time() - SKEW
    tracker = Tracker(uri, experiment)
    ungated = _gated(tracker.client, role, scenario, looked, turn)
    got = units.claim(tracker, KEY, [0, 1], 2, f"claimer {role}", TAGS, resume=True)
    ungated()  # the unit is decided; now every claimer asks for fold 0 at once, at the store's own pace
    claimed.wait(BOUND)
    fold = units.claim_fold(tracker, KEY, got.parent_id, 0, TAGS, scoped=False)
    results.put((role, owner_token(), got.state, got.parent_id, got.created, got.owner, fold.state, fold.holder))
    decided.wait(BOUND)  # alive until every claimer has decided: a rival on this machine lives while its pid does


def _earlier(uri, experiment, unit, dead):
    """What the store holds before the race: nothing, a FAILED parent, or a parent left RUNNING by a
    process that died inside the unit's section (holding claim 1)."""
    tracker = Tracker(uri, experiment)
    if unit == "resumed":
        tracker.finish(tracker.start_run("earlier", TAGS), "FAILED", "an earlier attempt")
    elif unit == "taken over":
        gone = {OWNER_TAG: dead, HEARTBEAT_TAG: "0"}
        assert tracker.create_claim(_claim_name(tracker, 1), gone)
        tracker.start_run("earlier", {**TAGS, **gone})


def _forked(target, *args_per_process):
    """`target` in forked processes, one per argument tuple (every store is opened in the children: a forked
    SQLAlchemy pool must not be shared with this process); each must exit 0 within BOUND."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=args) for args in args_per_process]
    for p in procs:
        p.start()
    for p in procs:
        p.join(BOUND)
    assert [p.exitcode for p in procs] == [0] * len(procs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("server")) as url:
        MlflowClient(url).search_experiments()  # its first request sets up the store (~20 s): not a test's time
        yield url


@pytest.mark.parametrize("unit", ["new", "resumed", "taken over"])
@pytest.mark.parametrize("scenario", ["delay", "skew", "together"])
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_claims_at_once_leave_one_parent_and_each_fold_to_one_job_whatever_the_delays_and_clocks(
        request, migrated_store, monkeypatch, store, scenario, unit):
    """Claimers that all looked at the store before any wrote: exactly one writes the parent (creates or
    reopens it) and the others join it; then all ask for fold 0 at once and exactly one trains it, the
    others held by it. With a delayed or skewed rival, the claim that landed first wins (the old settle
    let both run, or gave the unit to the skewed clock's older start_time)."""
    uri = request.getfixturevalue("server") if store == "server" else migrated_store
    if store == "sqlite":
        request.getfixturevalue("server_semantics")
    experiment = f"race {scenario} {unit}"
    _forked(_earlier, (uri, experiment, unit, _dead_owner()))
    n = 4 if scenario == "together" else 2
    ctx = multiprocessing.get_context("fork")
    sync, results = (ctx.Barrier(n), ctx.Event(), ctx.Barrier(n), ctx.Barrier(n)), ctx.Queue()
    _forked(_claimer, *[(uri, experiment, role, scenario, sync, results) for role in range(n)])
    got = sorted(results.get(timeout=BOUND) for _ in range(n))
    parent = got[0][3]
    assert all(g[2:4] == ("run", parent) for g in got), got  # one parent, every job in it
    owners = [g for g in got if g[5]]
    assert len(owners) == 1 and [g[4] for g in owners] == [unit == "new"], got
    assert scenario == "together" or owners[0][0] == 0, got
    trainers = [g for g in got if g[6] == "mine"]
    assert len(trainers) == 1, got
    assert all(g[6:8] == ("held", trainers[0][1]) for g in got if g is not trainers[0]), got
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    running = sorted((r.data.tags.get(FOLD_TAG, "parent"), r.data.tags[OWNER_TAG]) for r in runs
                     if r.info.status == "RUNNING")
    assert running == [("0", trainers[0][1]), ("parent", owners[0][1])] and len(runs) == 2  # no second parent
