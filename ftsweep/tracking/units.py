"""Claiming units of work in MLflow: a config's parent run (one config on one data set with one seed),
and each of its folds.

Jobs that run folds of one config (cv.folds, through any launcher) share its one parent run and claim
folds, not the parent: a fold run RUNNING under a live owner is left to it, one whose owner died is
marked KILLED and trained again, a FINISHED one is reused. A parent is alive while its owner or one of
its fold runs' owners is; a dead one is taken over (reopened) by the next job. When a job leaves, it
settles the parent: with every fold finished it writes the CV over all of them (or leaves that to a
live owner who will), else the parent says how many folds are finished and holds no rmse_mean.

Each look at the store and the writes it decides (the parent created, joined or reopened; a fold
claimed; the parent settled) is one critical section of the unit. On a SQLite store it runs under the
store's file lock. A server store has no lock that spans its clients: there the section belongs to
the process that creates the unit's claim, a hidden experiment named `<unit>#<n>`, and the server's
unique experiment names let only one creator through, whatever the delays and clocks. Claim n+1 is
tried once claim n is dead: released (claim n+1 made with no owner, as the section ends) or its
owner gone (pid, or heartbeat lease); a process killed inside a section leaves a claim the next
claimer replaces.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from mlflow.entities import Run

from ftsweep.errors import FtsweepError
from ftsweep.locks import LEASE_SECONDS, owner_alive, owner_tags, owner_token, store_lock
from ftsweep.tags import CLAIM_ID_TAG, CLAIM_PREFIX, CONFIG_KEY_TAG, FOLD_TAG, FOLDS_FINISHED_TAG, OWNER_TAG
from ftsweep.tracking.store import Tracker

log = logging.getLogger("ftsweep")
CLAIM_POLL_S = 0.2  # server stores: how often a process waiting for a unit's section looks again
CLAIM_WAIT_S = 2 * LEASE_SECONDS  # ... and how long before it gives up (a section takes a few requests)
PARENT = "mlflow.parentRunId"


@dataclass
class PreviousRun:
    """Earlier runs of one config key in this experiment (for resuming)."""

    parent_id: str
    parent_status: str
    finished_folds: dict[int, Run]  # fold -> its newest FINISHED run
    parents: list[Run] = field(default_factory=list)  # every parent run of the key, newest first
    running_folds: list[Run] = field(default_factory=list)  # fold runs still marked RUNNING

    @property
    def parent(self) -> Run:
        return self.parents[0]


def find_previous(tracker: Tracker, key: str, parent_id: str | None = None) -> PreviousRun | None:
    """The newest parent run with this config key and every fold FINISHED under any of them (with
    `parent_id`: that parent and its own folds only, as for tracking.resume=false)."""
    runs = tracker.runs_tagged(CONFIG_KEY_TAG, key)
    if parent_id is not None:
        runs = [r for r in runs if parent_id in (r.info.run_id, r.data.tags.get(PARENT))]
    parents = [r for r in runs if PARENT not in r.data.tags]
    if not parents:
        return None
    finished: dict[int, Run] = {}
    for run in runs:
        fold = run.data.tags.get(FOLD_TAG)
        if fold is not None and run.info.status == "FINISHED":
            finished.setdefault(int(fold), run)
    running = [r for r in runs if FOLD_TAG in r.data.tags and r.info.status == "RUNNING"]
    return PreviousRun(parents[0].info.run_id, parents[0].info.status, finished, parents, running)


@dataclass
class Claim:
    state: str  # "run": ours to work in | "finished": nothing left to do | "held": a live process has it
    parent_id: str | None
    previous: PreviousRun | None
    created: bool = False  # a new parent run (its params and artifacts are still to be logged)
    owner: bool = False  # this process holds the parent (created or reopened it); False: joined a live one
    holder: str = ""


@dataclass
class FoldClaim:
    state: str  # "done": finished earlier (`run`) | "held": a live process trains it | "mine": train it in `run_id`
    run: Run | None = None
    run_id: str = ""
    holder: str = ""


def alive(runs: list[Run]) -> set[str]:
    """The RUNNING runs among `runs` whose process lives: by their own owner (parents; fold runs since
    folds are claimed), a parent with a live fold run under it, a fold run without an owner (an older
    ftsweep) under a live parent."""
    running = [r for r in runs if r.info.status == "RUNNING"]
    own = {r.info.run_id for r in running if owner_alive(r.data.tags)}
    live = own | {r.data.tags.get(PARENT) for r in running if FOLD_TAG in r.data.tags and r.info.run_id in own}
    return live | {r.info.run_id for r in running
                   if FOLD_TAG in r.data.tags and OWNER_TAG not in r.data.tags and r.data.tags.get(PARENT) in live}


def held_folds(previous: PreviousRun | None) -> dict[int, str]:
    """fold -> the owner of a live process training it."""
    if previous is None:
        return {}
    live = alive(previous.parents + previous.running_folds)
    owners = {r.info.run_id: r.data.tags.get(OWNER_TAG, "?") for r in previous.parents}
    return {int(r.data.tags[FOLD_TAG]): r.data.tags.get(OWNER_TAG) or owners.get(r.data.tags.get(PARENT), "?")
            for r in previous.running_folds if r.info.run_id in live}


def complete(parent: Run) -> bool:
    """The parent holds the CV over every fold (a partial one says how many are finished)."""
    return parent.info.status == "FINISHED" and FOLDS_FINISHED_TAG not in parent.data.tags


def other_owner(parent: Run) -> str | None:
    """The live process, not this one, that holds the parent run (it settles it when it leaves)."""
    tags = parent.data.tags
    if parent.info.status != "RUNNING" or tags.get(OWNER_TAG) == owner_token() or not owner_alive(tags):
        return None
    return tags[OWNER_TAG]


def inspect(tracker: Tracker, key: str, folds: list[int], n_folds: int) -> Claim:
    """What the store says of this unit for a job that runs `folds`, without changing anything."""
    previous = find_previous(tracker, key)
    if previous is None:
        return Claim("run", None, None)
    parent_id = previous.parent_id
    todo = [f for f in folds if f not in previous.finished_folds]
    if todo:
        held = held_folds(previous)
        if all(f in held for f in todo):
            return Claim("held", parent_id, previous, holder=held[todo[0]])
        return Claim("run", parent_id, previous)
    if complete(previous.parent) or any(f not in previous.finished_folds for f in range(n_folds)):
        return Claim("finished", parent_id, previous)
    holder = other_owner(previous.parent)  # every fold finished, the CV not yet written: by its owner
    return Claim("held", parent_id, previous, holder=holder) if holder else Claim("run", parent_id, previous)


def claim(tracker: Tracker, key: str, folds: list[int], n_folds: int, name: str, tags: dict[str, str],
          resume: bool) -> Claim:
    """Work in the unit: a new parent, a live one joined, or a dead one reopened (resume); or why not."""
    with section(tracker, key):
        close_orphans(tracker)
        if not resume:  # tracking.resume=false: a new run, wanted
            return Claim("run", tracker.start_run(name, {**tags, **owner_tags()}), None, created=True, owner=True)
        state = inspect(tracker, key, folds, n_folds)
        if state.state != "run":
            return state
        if state.previous is None:
            return Claim("run", tracker.start_run(name, {**tags, **owner_tags()}), None, created=True, owner=True)
        previous = state.previous
        if state.parent_id in alive(previous.parents + previous.running_folds):
            return state  # joined: its owner, or the jobs training its folds, settle it too
        tracker.reopen(state.parent_id, owner_tags())
        _kill_stale(tracker, previous, keep=state.parent_id)
        state.owner = True
        return state


def claim_fold(tracker: Tracker, key: str, parent_id: str, fold: int, tags: dict[str, str],
               scoped: bool) -> FoldClaim:
    """Take one fold: finished already (reuse it), trained by a live process (leave it), or a new fold
    run under `parent_id` that this process trains (a dead owner's run of it is marked KILLED)."""
    with section(tracker, key):
        previous = find_previous(tracker, key, parent_id if scoped else None)
        if previous is not None and fold in previous.finished_folds:
            return FoldClaim("done", run=previous.finished_folds[fold])
        held = held_folds(previous)
        if fold in held:
            return FoldClaim("held", holder=held[fold])
        if previous is not None:
            close_abandoned(tracker, [r for r in previous.running_folds if r.data.tags[FOLD_TAG] == str(fold)])
        tags = {**tags, FOLD_TAG: str(fold), **owner_tags()}
        return FoldClaim("mine", run_id=tracker.start_run(f"fold {fold}", tags, parent_id=parent_id))


def settle(tracker: Tracker, key: str, parent_id: str, n_folds: int, scoped: bool) -> tuple[str, int]:
    """A job leaves the unit: "aggregate" (every fold finished: this process now holds the parent and
    writes the CV), "left" (a live process settles it later), "complete" (written already) or
    "partial" (the parent closed with its count of finished folds); and how many folds are finished."""
    with section(tracker, key):
        previous = find_previous(tracker, key, parent_id if scoped else None)
        finished = sum(f in previous.finished_folds for f in range(n_folds))
        parent = tracker.get_run(parent_id)
        if complete(parent):
            return "complete", finished
        if other_owner(parent):
            return "left", finished
        if finished == n_folds:
            if parent.info.status != "RUNNING" or parent.data.tags.get(OWNER_TAG) != owner_token():
                tracker.reopen(parent_id, owner_tags())
            return "aggregate", finished
        tracker.set_tags(parent_id, {FOLDS_FINISHED_TAG: f"{finished} of {n_folds}"})
        if held_folds(previous):
            tracker.set_tags(parent_id, {OWNER_TAG: ""})  # alive through their fold runs; the last one settles it
            return "left", finished
        tracker.log_values(parent_id, {"n_folds_run": finished})
        if parent.info.status == "RUNNING":  # a FAILED or KILLED parent keeps its status and reason
            tracker.finish(parent_id, "FINISHED")
        return "partial", finished


@contextlib.contextmanager
def section(tracker: Tracker, key: str) -> Iterator[None]:
    """A critical section of the unit `key`: the store's file lock (SQLite), else its claim (server)."""
    with store_lock(tracker.uri) as exclusive:
        if exclusive:
            yield
            return
    label = _enter(tracker, claim_prefix(tracker.experiment_id, key))
    try:
        yield
    finally:
        release(tracker, label)


def claim_prefix(experiment_id: str, key: str) -> str:
    """The name of a unit's claims, less the generation: experiment names are unique store-wide."""
    return f"{CLAIM_PREFIX}{experiment_id}/{key}#"


def _enter(tracker: Tracker, prefix: str) -> str:
    """Create claim n+1 once claim n is dead (or none exists); wait while a live process holds it."""
    attempt = {**owner_tags(), CLAIM_ID_TAG: uuid.uuid4().hex}
    started = time.monotonic()
    while True:
        generation, holder = latest_claim(tracker, prefix)
        if holder is None:
            label = f"{prefix}{generation + 1}"
            if tracker.create_claim(label, attempt):
                return label
        elif time.monotonic() - started > CLAIM_WAIT_S:
            raise FtsweepError(f"the unit's claim {prefix}{generation} at {tracker.uri} has been held by {holder} "
                               f"for over {CLAIM_WAIT_S:.0f} s; rerun when that process has ended.")
        else:
            time.sleep(CLAIM_POLL_S)


def latest_claim(tracker: Tracker, prefix: str) -> tuple[int, str | None]:
    """The newest claim's generation (0: none), and its owner while that owner is alive (else None)."""
    claims = {int(name[len(prefix):]): tags for name, tags in tracker.claims(prefix).items()
              if name[len(prefix):].isdigit()}
    if not claims:
        return 0, None
    generation = max(claims)
    owner = claims[generation]
    return generation, owner[OWNER_TAG] if owner_alive(owner) else None


def release(tracker: Tracker, label: str) -> None:
    """Leave the section `label`: claim n+1 is created with no owner, a dead claim the next claimer
    replaces. A release that fails leaves the claim to lapse with its owner."""
    prefix, generation = label.rsplit("#", 1)
    try:
        tracker.create_claim(f"{prefix}#{int(generation) + 1}", {})
    except Exception as exc:  # noqa: BLE001 (the unit is held until this process ends or its lease lapses)
        log.warning("could not release the claim on this unit (%s): %s", label, str(exc).splitlines()[0][:200])


def _kill_stale(tracker: Tracker, previous: PreviousRun, keep: str) -> None:
    """Runs of this unit left RUNNING by a process that is gone (kill -9, a lost node)."""
    runs = previous.running_folds + previous.parents
    live = alive(runs)
    close_abandoned(tracker, [r for r in runs if r.info.run_id != keep and r.info.run_id not in live])


def close_orphans(tracker: Tracker, why: str = "the unit was taken over") -> None:
    """Runs of any config that a dead process left RUNNING (kill -9, or a full disk that kept it from
    closing them): owned runs whose process is gone, parents with no live fold run under them, fold
    runs of an older ftsweep (no owner of their own) whose parent is not alive. Runs without ftsweep's
    tags (tables, summaries, other tools' runs) are left alone."""
    running = tracker.running_runs()
    live = alive(running)
    close_abandoned(tracker, [r for r in running if (OWNER_TAG in r.data.tags or FOLD_TAG in r.data.tags)
                              and r.info.run_id not in live], why)


def close_abandoned(tracker: Tracker, runs: list, why: str = "the unit was taken over") -> None:
    """Mark KILLED the runs that still say RUNNING but whose owner process is gone (the reason, in the
    tag ftsweep.error: "its process (<owner>) is gone; <why>")."""
    stale = [r for r in runs if r.info.status == "RUNNING" and not owner_alive(r.data.tags)]
    for run in stale:
        owner = run.data.tags.get(OWNER_TAG) or "an earlier process"
        tracker.finish(run.info.run_id, "KILLED", f"its process ({owner}) is gone; {why}")
    if stale:
        log.info("marked %d run(s) KILLED that a dead process had left RUNNING", len(stale))
