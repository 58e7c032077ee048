"""tracking/units.py on a real SQLite store, without training: which process may run a unit (one
config, data and seed), when it is finished, and what a dead owner leaves behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ftsweep.locks import owner_token
from ftsweep.tags import CONFIG_KEY_TAG, FOLD_TAG, HEARTBEAT_TAG, OWNER_TAG
from ftsweep.tracking import units
from ftsweep.tracking.store import Tracker

KEY = "unit-key"


@pytest.fixture
def tracker(migrated_store) -> Tracker:
    return Tracker(migrated_store, "units")


def _dead_owner() -> str:
    """An owner token of this machine whose process has ended."""
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
