"""tracking/units.py on a real SQLite store, without training: which process may run a unit (one
config, data and seed), when it is finished, and what a dead owner leaves behind."""

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
from ftsweep.tags import CLAIM_TAG, CONFIG_KEY_TAG, FOLD_TAG, HEARTBEAT_TAG, OWNER_TAG
from ftsweep.tracking import units
from ftsweep.tracking.store import Tracker

from helpers import mlflow_server

KEY = "unit-key"


@pytest.fixture
def tracker(migrated_store) -> Tracker:
    return Tracker(migrated_store, "units")


@functools.lru_cache(maxsize=1)
def _dead_owner() -> str:
    """An owner token of this machine whose process has ended (its pid's start time tells a reuse apart)."""
    child = subprocess.run([sys.executable, "-c", "from ftsweep.locks import owner_token; print(owner_token())"],
                           capture_output=True, text=True, check=True)
    return child.stdout.strip()


def _finished_fold(tracker: Tracker, parent: str, fold: int) -> str:
    run = tracker.start_run(f"fold {fold}", {CONFIG_KEY_TAG: KEY, FOLD_TAG: str(fold)}, parent_id=parent)
    tracker.finish(run, "FINISHED")
    return run


def test_a_new_unit_is_claimed_by_a_new_parent_owned_by_this_process(tracker):
    assert units.inspect(tracker, KEY, [0, 1]).state == "run"
    mine = units.claim(tracker, KEY, [0, 1], "row", {CONFIG_KEY_TAG: KEY}, resume=True)
    assert (mine.state, mine.created, mine.previous) == ("run", True, None)
    parent = tracker.get_run(mine.parent_id)
    assert parent.info.status == "RUNNING" and parent.data.tags[OWNER_TAG] == owner_token()
    assert HEARTBEAT_TAG in parent.data.tags


def test_a_unit_whose_owner_lives_is_held_and_named(tracker):
    first = units.claim(tracker, KEY, [0, 1], "row", {CONFIG_KEY_TAG: KEY}, resume=True)
    second = units.claim(tracker, KEY, [0, 1], "row", {CONFIG_KEY_TAG: KEY}, resume=True)
    assert (second.state, second.parent_id, second.holder) == ("held", first.parent_id, owner_token())
    assert len(tracker.runs_tagged(CONFIG_KEY_TAG, KEY)) == 1  # no second parent


def test_a_unit_with_every_fold_finished_is_finished_and_one_fold_short_is_resumed(tracker):
    parent = units.claim(tracker, KEY, [0, 1], "row", {CONFIG_KEY_TAG: KEY}, resume=True).parent_id
    _finished_fold(tracker, parent, 0)
    tracker.finish(parent, "FINISHED")
    assert units.inspect(tracker, KEY, [0]).state == "finished"
    resumed = units.inspect(tracker, KEY, [0, 1])
    assert (resumed.state, resumed.parent_id, sorted(resumed.previous.finished_folds)) == ("run", parent, [0])


def test_a_dead_owners_unit_is_taken_over_and_its_running_runs_killed(tracker):
    dead = {OWNER_TAG: _dead_owner(), HEARTBEAT_TAG: "0"}
    parent = tracker.start_run("row", {CONFIG_KEY_TAG: KEY, **dead})
    fold = tracker.start_run("fold 0", {CONFIG_KEY_TAG: KEY, FOLD_TAG: "0"}, parent_id=parent)
    taken = units.claim(tracker, KEY, [0, 1], "row", {CONFIG_KEY_TAG: KEY}, resume=True)
    assert (taken.state, taken.parent_id, taken.created) == ("run", parent, False)  # reopened, not duplicated
    assert tracker.get_run(parent).data.tags[OWNER_TAG] == owner_token()
    assert tracker.get_run(fold).info.status == "KILLED"


def test_without_resume_a_finished_unit_runs_again_under_a_new_parent(tracker):
    old = units.claim(tracker, KEY, [0], "row", {CONFIG_KEY_TAG: KEY}, resume=True).parent_id
    _finished_fold(tracker, old, 0)
    tracker.finish(old, "FINISHED")
    fresh = units.claim(tracker, KEY, [0], "row", {CONFIG_KEY_TAG: KEY}, resume=False)
    assert fresh.state == "run" and fresh.created and fresh.parent_id != old


def test_close_orphans_leaves_tables_and_live_runs_alone(tracker):
    live = tracker.start_run("row", {CONFIG_KEY_TAG: KEY, OWNER_TAG: owner_token(), HEARTBEAT_TAG: "0"})
    table = tracker.start_run("results table", {})  # no owner tag: not ftsweep's to close
    orphan = tracker.start_run("row", {CONFIG_KEY_TAG: "other", OWNER_TAG: _dead_owner()})
    units.close_orphans(tracker)
    assert [tracker.get_run(r).info.status for r in (live, table, orphan)] == ["RUNNING", "RUNNING", "KILLED"]


# Server stores: no file lock spans the clients, so a claim is a hidden experiment `<unit>#<n>` that only one
# process can create. Here a SQLite store stands in for the server (same unique experiment names, no lock), and
# the races below run on a real `mlflow server` too.

@pytest.fixture
def server_semantics(monkeypatch):
    """Claims on this test's SQLite store are made as on a server store: without the file lock."""
    @contextlib.contextmanager
    def no_lock(uri):
        yield False

    monkeypatch.setattr(units, "store_lock", no_lock)


def _claim(tracker: Tracker, folds=(0, 1)) -> units.Claim:
    return units.claim(tracker, KEY, list(folds), "row", {CONFIG_KEY_TAG: KEY}, resume=True)


def _claim_name(tracker: Tracker, generation: int) -> str:
    return f"{units.claim_prefix(tracker.experiment_id, KEY)}{generation}"


def test_on_a_server_store_the_claim_is_a_hidden_experiment_named_on_the_parent(tracker, server_semantics):
    mine = _claim(tracker)
    assert (mine.state, mine.created, mine.label) == ("run", True, _claim_name(tracker, 1))
    assert tracker.get_run(mine.parent_id).data.tags[CLAIM_TAG] == mine.label
    assert tracker.claims(units.claim_prefix(tracker.experiment_id, KEY))[mine.label][OWNER_TAG] == owner_token()
    assert tracker.experiments() == [("units", tracker.experiment_id)]  # deleted: not in the UI's list
    again = _claim(tracker)
    assert (again.state, again.parent_id, again.holder) == ("held", mine.parent_id, owner_token())


def test_a_claim_whose_winner_died_before_writing_its_parent_is_taken_over(tracker, server_semantics):
    """The winner of claim 1 was killed between creating the claim and creating the parent run."""
    assert tracker.create_claim(_claim_name(tracker, 1), {OWNER_TAG: _dead_owner(), HEARTBEAT_TAG: "0"})
    taken = _claim(tracker)
    assert (taken.state, taken.created, taken.label) == ("run", True, _claim_name(tracker, 2))


def test_a_remote_claim_is_held_while_its_lease_runs_and_taken_over_after(tracker, server_semantics, monkeypatch):
    """A claim on another machine that never wrote its parent: held for LEASE_SECONDS after its heartbeat
    (a partitioned owner keeps it that long), then taken over. The clock is advanced, not waited for."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(locks, "clock", lambda: now[0])
    remote = "node7/abcd:1234:99"
    assert tracker.create_claim(_claim_name(tracker, 1), {OWNER_TAG: remote, HEARTBEAT_TAG: locks.beat()})
    now[0] += locks.LEASE_SECONDS - 1
    held = _claim(tracker)
    assert (held.state, held.parent_id, held.holder) == ("held", None, remote)
    now[0] += 1
    assert _claim(tracker).label == _claim_name(tracker, 2)


def test_a_closed_unit_stays_held_until_its_owner_releases_the_claim(tracker, server_semantics):
    """The owner lives on (a serial sweep's next job) after closing its parent: its claim goes when it
    releases it, and the next claim reopens the parent under claim 3 (2 is the release)."""
    first = _claim(tracker, [0])
    tracker.finish(first.parent_id, "FAILED", "a fold failed")
    held = _claim(tracker, [0])
    assert (held.state, held.holder) == ("held", owner_token())
    units.release(tracker, first.label)
    again = _claim(tracker, [0])
    assert (again.state, again.parent_id, again.created, again.label) == ("run", first.parent_id, False,
                                                                           _claim_name(tracker, 3))
    assert tracker.get_run(first.parent_id).data.tags[CLAIM_TAG] == again.label


DELAY = 3.0  # one claimer's writes land this late (a slow or restarting server): longer than the old 2 s settle
SKEW = 60.0  # one claimer's clock runs this far behind (inside the 180 s lease, which a clock must keep to)
BOUND = 90.0  # waits on other processes wait for an event; this only ends a hung test (2 loaded cores)
_DECIDING = ("create_experiment", "create_run", "update_run")  # a claim's first write (old code: a parent run)
_WRITES = (*_DECIDING, "set_tag", "delete_experiment")


def _gated(client, role: int, scenario: str, looked, turn) -> None:
    """Replace the client's writes so that claimer 0's claim lands first and claimer 1's after it, both
    made after every claimer has looked at the store. "delay": claimer 1 sends first, but every write of
    it lands DELAY s late (a run stamped when sent, as MLflow's client does). "skew": claimer 1 writes
    once claimer 0's first write landed, stamped by a clock SKEW s behind. "together": all at once."""
    first = [True]

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
            if (scenario, role) == ("delay", 1):
                time.sleep(DELAY)  # the delay under test (the write's latency), not a wait for an event
            out = real(*args, **kwargs)
            if opening and (scenario, role) == ("skew", 0):
                turn.set()
            return out
        return write

    for name in _WRITES:
        setattr(client, name, wrap(name, getattr(client, name)))


def _claimer(uri, experiment, role, scenario, sync, results):
    looked, turn, decided = sync
    if scenario == "skew":  # two machines: liveness is judged by heartbeats and each one's clock
        locks._machine = lambda: f"node{role}/0"
        if role == 1:
            locks.clock = lambda: time.time() - SKEW
    tracker = Tracker(uri, experiment)
    _gated(tracker.client, role, scenario, looked, turn)
    got = units.claim(tracker, KEY, [0, 1], f"claimer {role}", {CONFIG_KEY_TAG: KEY}, resume=True)
    results.put((role, owner_token(), got.state, got.parent_id, got.holder, got.created))
    decided.wait(BOUND)  # alive until every claimer has decided: a rival on this machine lives while its pid does


def _earlier(uri, experiment, unit, dead):
    """What the store holds before the race: nothing, a FAILED parent, or a parent left RUNNING by a
    process that died holding claim 1."""
    tracker = Tracker(uri, experiment)
    if unit == "resumed":
        tracker.finish(tracker.start_run("earlier", {CONFIG_KEY_TAG: KEY}), "FAILED", "an earlier attempt")
    elif unit == "taken over":
        gone = {OWNER_TAG: dead, HEARTBEAT_TAG: "0"}
        assert tracker.create_claim(_claim_name(tracker, 1), gone)
        tracker.start_run("earlier", {CONFIG_KEY_TAG: KEY, CLAIM_TAG: _claim_name(tracker, 1), **gone})


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
def test_claims_at_once_leave_exactly_one_owner_whatever_the_delays_and_clocks(request, migrated_store,
                                                                               monkeypatch, store, scenario, unit):
    """Claimers that all looked at the store before any wrote: exactly one runs the unit, the others are
    held by it. With a delayed or skewed rival, the claim that landed first wins (the old settle let both
    run, or gave the unit to the skewed clock's older start_time)."""
    uri = request.getfixturevalue("server") if store == "server" else migrated_store
    if store == "sqlite":
        request.getfixturevalue("server_semantics")
    experiment = f"race {scenario} {unit}"
    _forked(_earlier, (uri, experiment, unit, _dead_owner()))
    n = 4 if scenario == "together" else 2
    ctx = multiprocessing.get_context("fork")
    sync, results = (ctx.Barrier(n), ctx.Event(), ctx.Barrier(n)), ctx.Queue()
    _forked(_claimer, *[(uri, experiment, role, scenario, sync, results) for role in range(n)])
    got = sorted(results.get(timeout=BOUND) for _ in range(n))
    winners = [g for g in got if g[2] == "run"]
    assert len(winners) == 1, got
    role, token, _, parent, _, created = winners[0]
    assert scenario == "together" or role == 0, got
    assert all(g[2:5] in (("held", parent, token), ("held", None, token)) for g in got if g[0] != role), got
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    running = [r for r in runs if r.info.status == "RUNNING"]
    assert [(r.info.run_id, r.data.tags[OWNER_TAG]) for r in running] == [(parent, token)]
    assert created == (unit == "new") and len(runs) == 1  # no second parent
