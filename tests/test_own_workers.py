"""After a stop, a grid sweep marks KILLED only the runs whose process is gone, and waits for its own
job processes first: joblib SIGKILLs its workers from a thread of its own, and a second Ctrl-C cut
joblib's wait for that short, so a worker checked while still alive kept its runs RUNNING for good
(CI: `grid-ctrl-c-twice` left two runs RUNNING). A process that has ended but is not yet reaped (a
zombie) holds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from ftsweep import jobs, locks
from ftsweep.tags import OWNER_TAG
from ftsweep.tracking.store import Tracker
from hydra_plugins.ftsweep_grid_sweeper.grid_sweeper import GridSweeper


def _tags(pid: int) -> dict[str, str]:
    return {OWNER_TAG: f"{locks._machine()}:{pid}:{locks._start_time(pid)}"}


def _state(pid: int) -> str:
    return (locks._stat(pid) or ["gone"])[0]


def _until(condition, what: str) -> None:
    """Wait for a condition the test causes (bounded only so that a broken build fails, not hangs)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_an_ended_process_not_yet_reaped_is_not_an_owner(processes):
    proc = subprocess.Popen(["sleep", "300"])
    processes.append(proc)
    tags = _tags(proc.pid)
    assert locks.owner_alive(tags)
    os.kill(proc.pid, signal.SIGKILL)
    _until(lambda: _state(proc.pid) == "Z", "the killed child never became a zombie")
    assert not locks.owner_alive(tags)  # before: os.kill(pid, 0) succeeds on a zombie, so "alive"


def test_descendants_are_told_from_other_processes(processes):
    child = subprocess.Popen(["sh", "-c", "sleep 300; true"])  # sh stays: sleep is a grandchild
    processes.append(child)
    _until(lambda: any(locks._stat(pid)[1:2] == [str(child.pid)] for pid in _pids()), "no grandchild")
    grandchild = next(pid for pid in _pids() if locks._stat(pid)[1:2] == [str(child.pid)])
    assert locks._descends_from_me(child.pid) and locks._descends_from_me(grandchild)
    assert not locks._descends_from_me(os.getppid()) and not locks._descends_from_me(os.getpid())
    assert not locks._descends_from_me(2 ** 22 + 7)  # no such process


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def test_own_owners_that_end_in_time_are_left_to_end(processes):
    proc = subprocess.Popen(["sleep", "0.5"])
    processes.append(proc)
    locks.end_own_owners([_tags(proc.pid)], grace=120)
    assert proc.wait() == 0  # ended by itself, not killed


def test_without_kill_a_live_own_owner_is_waited_for_and_left_running(processes):
    """A job that died under submitit_local: the sweep's other jobs run on to their end."""
    mine = subprocess.Popen(["sleep", "300"])
    processes.append(mine)
    locks.end_own_owners([_tags(mine.pid)], grace=0.2, kill=False)
    assert mine.poll() is None


def test_own_owners_still_alive_after_the_grace_are_killed_and_others_are_not(processes):
    mine = subprocess.Popen(["sleep", "300"])
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    processes.extend([mine, other])
    foreign = {OWNER_TAG: f"another-host/1234:{other.pid}:{locks._start_time(other.pid)}"}
    locks.end_own_owners([_tags(mine.pid), foreign, {}, {OWNER_TAG: "garbage"}], grace=0.2)
    assert mine.wait() == -signal.SIGKILL
    assert other.poll() is None  # another machine's pid: never this process's to kill
    parent = _tags(os.getppid())
    locks.end_own_owners([_tags(os.getpid()), parent], grace=0.2)  # not descendants: untouched
    assert locks.owner_alive(parent)


def test_a_stopped_grid_marks_a_worker_s_runs_killed_once_the_worker_is_gone(migrated_store, monkeypatch, processes):
    """The sweep's clean-up against a worker that is still alive when it starts (as after a second
    Ctrl-C): it waits, kills the worker after the grace, and only then closes the worker's runs."""
    tracker = Tracker(migrated_store, "stop")
    worker = subprocess.Popen(["sleep", "300"])
    processes.append(worker)
    parent = tracker.start_run("parent", {OWNER_TAG: _tags(worker.pid)[OWNER_TAG]})
    fold = tracker.start_run("fold 0", {OWNER_TAG: _tags(worker.pid)[OWNER_TAG], "ftsweep.fold": "0"},
                             parent_id=parent)
    # another sweep's run, its owner alive and not this process's descendant (PID 1): left alone
    others = tracker.start_run("other sweep", {OWNER_TAG: f"{locks._machine()}:1:{locks._start_time(1)}"})
    monkeypatch.setattr(jobs, "ORPHAN_GRACE", 0.2)
    # the sweeper's own method on a stand-in (Hydra's plugin scan, run by other tests in this process,
    # imports Hydra's basic sweeper anew, and GridSweeper's constructor then fails its super() check)
    sweeper = SimpleNamespace(config=OmegaConf.create({"tracking": {"uri": migrated_store}}))
    GridSweeper._close_dead_runs(sweeper, "stop", wait=True, stop_jobs=True)
    status = {run_id: tracker.get_run(run_id).info.status for run_id in (parent, fold, others)}
    assert status == {parent: "KILLED", fold: "KILLED", others: "RUNNING"}
    assert worker.poll() == -signal.SIGKILL  # killed after the grace, and ended before the runs were closed
    assert "is gone" in tracker.get_run(fold).data.tags["ftsweep.error"]
