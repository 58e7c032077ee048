"""Claiming a unit of work (one config on one data set with one seed) in MLflow.

A parent run RUNNING under a live owner is left alone; one whose owner died is
taken over, and the runs it left RUNNING are marked KILLED. On a SQLite store the
look-and-claim happens under a file lock, so two sweeps on one machine never take
the same unit. A server store has no lock that spans its clients: there a unit
goes to the process that creates its claim, a hidden experiment named
`<unit>#<n>`, and the server's unique experiment names let only one creator
through, whatever the delays and clocks. Claim n+1 is tried only once claim n is
dead: its owner is gone (pid, or heartbeat lease) or released it (claim n+1 made
with no owner, when the parent run closes). A crash between winning a claim and
writing the parent run leaves a claim whose owner is dead: the next claimer takes
the unit over.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from ftsweep.locks import owner_alive, owner_tags, store_lock
from ftsweep.tags import CLAIM_ID_TAG, CLAIM_PREFIX, CLAIM_TAG, FOLD_TAG, OWNER_TAG
from ftsweep.tracking.store import PreviousRun, Tracker

log = logging.getLogger("ftsweep")
CLAIM_TRIES = 3  # server stores: claims lost in a row before the unit is left to whoever holds it


@dataclass
class Claim:
    state: str  # "run": ours to run | "finished": nothing left to do | "held": a live process has it
    parent_id: str | None
    previous: PreviousRun | None
    created: bool = False  # a new parent run (its params and artifacts are still to be logged)
    holder: str = ""
    label: str = ""  # server stores: the claim this process holds until release(label)


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
        if exclusive or not resume:  # SQLite: the file lock; tracking.resume=false: a new run, wanted
            return _take(tracker, state, name, tags, mine)
    return _claim_on_server(tracker, key, folds, name, tags, mine)


def _take(tracker: Tracker, state: Claim, name: str, tags: dict[str, str], mine: dict[str, str]) -> Claim:
    """Write the claim into the parent run: the previous one reopened, or a new one."""
    if state.previous is None:
        return Claim("run", tracker.start_run(name, {**tags, **mine}), None, created=True)
    tracker.reopen(state.parent_id, mine)
    _kill_stale(tracker, state.previous, keep=state.parent_id)
    return state


def _claim_on_server(tracker: Tracker, key: str, folds: list[int], name: str, tags: dict[str, str],
                     mine: dict[str, str]) -> Claim:
    """Create claim n+1 where claim n is dead (or none exists); a rival that created it first holds it."""
    prefix = claim_prefix(tracker.experiment_id, key)
    attempt = {**mine, CLAIM_ID_TAG: uuid.uuid4().hex}
    for _ in range(CLAIM_TRIES):
        generation, holder = _latest_claim(tracker, prefix)
        if holder is not None:
            return holder
        label = f"{prefix}{generation + 1}"
        if tracker.create_claim(label, attempt):
            return _won(tracker, key, folds, name, tags, {**mine, CLAIM_TAG: label})
    holder = _latest_claim(tracker, prefix)[1]
    return holder or Claim("held", None, None, holder="rival claims (lost the race for it three times)")


def claim_prefix(experiment_id: str, key: str) -> str:
    """The name of a unit's claims, less the generation: experiment names are unique store-wide."""
    return f"{CLAIM_PREFIX}{experiment_id}/{key}#"


def _latest_claim(tracker: Tracker, prefix: str) -> tuple[int, Claim | None]:
    """The newest claim's generation (0: none), and who holds it (None: nobody alive does). Its owner
    is judged on the parent run it wrote (renewed heartbeat) or, before that, on the claim itself."""
    claims = {int(name[len(prefix):]): tags for name, tags in tracker.claims(prefix).items()
              if name[len(prefix):].isdigit()}
    if not claims:
        return 0, None
    generation = max(claims)
    parents = tracker.runs_tagged(CLAIM_TAG, f"{prefix}{generation}")
    owner = parents[0].data.tags if parents else claims[generation]
    if not owner_alive(owner):
        return generation, None
    parent_id = parents[0].info.run_id if parents else None
    return generation, Claim("held", parent_id, None, holder=owner.get(OWNER_TAG, "?"))


def _won(tracker: Tracker, key: str, folds: list[int], name: str, tags: dict[str, str],
         mine: dict[str, str]) -> Claim:
    """This process created the claim mine[CLAIM_TAG]. The unit may have finished (or been started
    with tracking.resume=false) since it was looked at: then the claim is released at once."""
    label = mine[CLAIM_TAG]
    try:
        state = inspect(tracker, key, folds)
        if state.state == "run":
            state = _take(tracker, state, name, tags, mine)
            state.label = label
            return state
    except BaseException:
        release(tracker, label)
        raise
    release(tracker, label)
    return state


def release(tracker: Tracker, label: str) -> None:
    """Give up the claim `label` (its parent run is closed): claim n+1 is created with no owner, a dead
    claim the next claimer replaces. A release that fails leaves the claim to lapse with its owner."""
    if not label:
        return
    prefix, generation = label.rsplit("#", 1)
    try:
        tracker.create_claim(f"{prefix}#{int(generation) + 1}", {})
    except Exception as exc:  # noqa: BLE001 (the unit is held until this process ends or its lease lapses)
        log.warning("could not release the claim on this unit (%s): %s", label, str(exc).splitlines()[0][:200])


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
