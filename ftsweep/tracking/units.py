"""Claiming a unit of work (one config on one data set with one seed) in MLflow.

A parent run RUNNING under a live owner is left alone; one whose owner died is
taken over, and the runs it left RUNNING are marked KILLED. On a SQLite store the
look-and-claim happens under a file lock, so two sweeps on one machine never take
the same unit; on a server store the claim is written, then checked against rivals
after SETTLE_SECONDS: the younger of two new parents is deleted, and of two claims
reopening one parent, the one whose owner tag was not written last backs off.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ftsweep.locks import owner_alive, owner_tags, store_lock
from ftsweep.tags import CONFIG_KEY_TAG, FOLD_TAG, OWNER_TAG
from ftsweep.tracking.store import PreviousRun, Tracker

log = logging.getLogger("ftsweep")
SETTLE_SECONDS = 2.0  # server stores: time for a rival's claim to land before we compare


@dataclass
class Claim:
    state: str  # "run": ours to run | "finished": nothing left to do | "held": a live process has it
    parent_id: str | None
    previous: PreviousRun | None
    created: bool = False  # a new parent run (its params and artifacts are still to be logged)
    holder: str = ""


def inspect(tracker: Tracker, key: str, folds: list[int]) -> Claim:
    """What the store says of this unit, without changing anything."""
    previous = tracker.find_previous(key)
    if previous is None:
        return Claim("run", None, None)
    live = [p for p in previous.parents if p.info.status == "RUNNING" and owner_alive(p.data.tags)]
    if live:
        return Claim("held", live[0].info.run_id, previous, holder=live[0].data.tags.get(OWNER_TAG, "?"))
    if previous.parent_status == "FINISHED" and all(f in previous.finished_folds for f in folds):
        return Claim("finished", previous.parent_id, previous)
    return Claim("run", previous.parent_id, previous)


def claim(tracker: Tracker, key: str, folds: list[int], name: str, tags: dict[str, str], resume: bool) -> Claim:
    """Take the unit for this process: reopen the previous parent (resume) or start a new one."""
    mine = owner_tags()
    with store_lock(tracker.uri) as exclusive:
        close_orphans(tracker)
        state = inspect(tracker, key, folds) if resume else Claim("run", None, None)
        if state.state != "run":
            return state
        if state.previous is not None:
            tracker.reopen(state.parent_id, mine)
            _kill_stale(tracker, state.previous, keep=state.parent_id)
        else:
            state = Claim("run", tracker.start_run(name, {**tags, **mine}), None, created=True)
    if exclusive or not resume:
        return state
    return _settle(tracker, key, state, mine[OWNER_TAG])


def _kill_stale(tracker: Tracker, previous: PreviousRun, keep: str) -> None:
    """Runs of this unit left RUNNING by a process that is gone (kill -9, a lost node)."""
    close_abandoned(tracker, [r for r in previous.running_folds + previous.parents if r.info.run_id != keep])


def close_orphans(tracker: Tracker) -> None:
    """Runs of any config that a dead process left RUNNING (kill -9, or a full disk that kept it from
    closing them): owned parents whose owner is gone, and fold runs whose parent is no longer held.
    Runs without ftsweep's owner tag (tables, summaries, other tools' runs) are left alone."""
    running = tracker.running_runs()
    held = {r.info.run_id for r in running if OWNER_TAG in r.data.tags and owner_alive(r.data.tags)}
    orphans = [r for r in running if (OWNER_TAG in r.data.tags and r.info.run_id not in held)
               or (FOLD_TAG in r.data.tags and r.data.tags.get("mlflow.parentRunId") not in held)]
    close_abandoned(tracker, orphans)


def close_abandoned(tracker: Tracker, runs: list) -> None:
    """Mark KILLED the runs that still say RUNNING but whose owner process is gone."""
    stale = [r for r in runs if r.info.status == "RUNNING" and not owner_alive(r.data.tags)]
    for run in stale:
        owner = run.data.tags.get(OWNER_TAG, "an earlier process")
        tracker.finish(run.info.run_id, "KILLED", f"its process ({owner}) is gone; the unit was taken over")
    if stale:
        log.info("marked %d run(s) KILLED that a dead process had left RUNNING", len(stale))


def _settle(tracker: Tracker, key: str, state: Claim, token: str) -> Claim:
    """Server stores have no lock: after claiming, the older claim of two live ones wins."""
    time.sleep(SETTLE_SECONDS)
    if not state.created:
        holder = tracker.get_run(state.parent_id).data.tags.get(OWNER_TAG, "")
        return state if holder == token else Claim("held", state.parent_id, state.previous, holder=holder)
    ours = tracker.get_run(state.parent_id)
    rivals = [p for p in tracker.runs_tagged(CONFIG_KEY_TAG, key)
              if "mlflow.parentRunId" not in p.data.tags and p.info.run_id != state.parent_id
              and p.info.status == "RUNNING" and owner_alive(p.data.tags)
              and (p.info.start_time, p.info.run_id) < (ours.info.start_time, ours.info.run_id)]
    if not rivals:
        return state
    tracker.delete_run(state.parent_id)
    return Claim("held", rivals[0].info.run_id, None, holder=rivals[0].data.tags.get(OWNER_TAG, "?"))
