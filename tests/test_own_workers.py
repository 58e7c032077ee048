"""After a stop, a grid sweep marks KILLED only the runs whose process is gone, and waits for its own
job processes first: joblib SIGKILLs its workers from a thread of its own, and a second Ctrl-C cut
joblib's wait for that short, so a worker checked while still alive kept its runs RUNNING for good
(CI: `grid-ctrl-c-twice` left two runs RUNNING). A process that has ended but is not yet reaped (a
zombie) holds nothing."""

from __future__ import annotations

import contextlib
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
    """Popen objects to stop after the test, each with its whole process group (grandchildren too)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _start(*command: str) -> subprocess.Popen:
    return subprocess.Popen(list(command), start_new_session=True)


@pytest.fixture
def stranger():
    """A live process of this machine that does not descend from this one (its parent shell exited,
    so it was handed to init or a subreaper above us): another sweep's worker, say."""
    out = subprocess.run(["sh", "-c", "sleep 300 > /dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                         start_new_session=True)
    pid = int(out.stdout)
    _until(lambda: not locks._descends_from_me(pid), "the stranger stayed a descendant")
    yield pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_an_ended_process_not_yet_reaped_is_not_an_owner(processes):
    proc = _start("sleep", "300")
    processes.append(proc)
    tags = _tags(proc.pid)
    assert locks.owner_alive(tags)
    os.kill(proc.pid, signal.SIGKILL)
    _until(lambda: _state(proc.pid) == "Z", "the killed child never became a zombie")
    assert not locks.owner_alive(tags)  # before: os.kill(pid, 0) succeeds on a zombie, so "alive"


def test_descendants_are_told_from_other_processes(processes, stranger):
    child = _start("sh", "-c", "sleep 300; true")  # sh stays: sleep is a grandchild
    processes.append(child)
    _until(lambda: any(locks._stat(pid)[1:2] == [str(child.pid)] for pid in _pids()), "no grandchild")
    grandchild = next(pid for pid in _pids() if locks._stat(pid)[1:2] == [str(child.pid)])
    assert locks._descends_from_me(child.pid) and locks._descends_from_me(grandchild)
    assert not locks._descends_from_me(stranger)
    assert not locks._descends_from_me(os.getppid()) and not locks._descends_from_me(os.getpid())
    assert not locks._descends_from_me(2 ** 22 + 7)  # no such process


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


@pytest.mark.parametrize("token", ["", "garbage", "a:b", "m:²:1", "m:-5:1", "m:99999999999999999999:1", "m:0:1"])
def test_malformed_owner_tokens_are_no_owner(token):
    tags = {OWNER_TAG: token.replace("m:", f"{locks._machine()}:")}
    assert not locks.owner_alive(tags) and locks._own_pid(tags) is None


def test_own_owners_that_end_in_time_are_left_to_end(processes):
    proc = _start("sleep", "0.5")
    processes.append(proc)
    locks.end_own_owners([_tags(proc.pid)], grace=120)
    assert proc.poll() == 0  # it returned once the owner had ended, by itself, not killed


def test_without_kill_a_live_own_owner_is_waited_for_and_left_running(processes):
    """A job that died under joblib: its pool's other workers are waited for, never killed here."""
    mine = _start("sleep", "300")
    processes.append(mine)
    began = time.monotonic()
    locks.end_own_owners([_tags(mine.pid)], grace=0.5, kill=False)
    assert time.monotonic() - began >= 0.5 and mine.poll() is None


def test_own_owners_still_alive_after_the_grace_are_killed_and_others_are_not(processes, stranger):
    mine, reused, unstarted = _start("sleep", "300"), _start("sleep", "300"), _start("sleep", "300")
    processes.extend([mine, reused, unstarted])
    others = [
        {OWNER_TAG: f"another-host/1234:{mine.pid}:{locks._start_time(mine.pid)}"},  # another machine's pid
        {OWNER_TAG: f"{locks._machine()}:{reused.pid}:1"},  # the pid now belongs to another process
        {OWNER_TAG: f"{locks._machine()}:{unstarted.pid}:-"},  # no start time: a reused pid cannot be told
        _tags(stranger), _tags(os.getpid()), _tags(os.getppid()), {}, {OWNER_TAG: "garbage"},
    ]
    locks.end_own_owners(others, grace=0.2)
    assert [proc.poll() for proc in (mine, reused, unstarted)] == [None, None, None]
    assert locks.owner_alive(_tags(stranger))
    locks.end_own_owners([_tags(mine.pid)], grace=0.2)
    assert mine.poll() == -signal.SIGKILL  # gone (reaped by none but us) before the call returned


@pytest.fixture
def signals_kept():
    """The sweeper's clean-up ignores Ctrl-C and SIGTERM from then on (its process only leaves
    after it): give this test process its handlers back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_stopped_grid_marks_a_worker_s_runs_killed_once_the_worker_is_gone(migrated_store, monkeypatch, processes,
                                                                            stranger, signals_kept):
    """The sweep's clean-up against a worker that is still alive when it starts (as after a second
    Ctrl-C): it waits, kills the worker after the grace, and only then closes the worker's runs;
    another sweep's live worker and its run are left alone."""
    tracker = Tracker(migrated_store, "stop")
    worker = _start("sleep", "300")
    processes.append(worker)
    owner = _tags(worker.pid)
    parent = tracker.start_run("parent", owner)
    fold = tracker.start_run("fold 0", {**owner, "ftsweep.fold": "0"}, parent_id=parent)
    others = tracker.start_run("other sweep", _tags(stranger))
    monkeypatch.setattr(jobs, "ORPHAN_GRACE", 0.2)
    # the sweeper's own method on a stand-in (Hydra's plugin scan, run by other tests in this process,
    # imports Hydra's basic sweeper anew, and GridSweeper's constructor then fails its super() check)
    sweeper = SimpleNamespace(config=OmegaConf.create({"tracking": {"uri": migrated_store}}))
    GridSweeper._close_dead_runs(sweeper, "stop", wait=True, stop_jobs=True)
    status = {run_id: tracker.get_run(run_id).info.status for run_id in (parent, fold, others)}
    assert status == {parent: "KILLED", fold: "KILLED", others: "RUNNING"}
    assert worker.poll() == -signal.SIGKILL  # killed after the grace, and ended before the runs were closed
    assert locks.owner_alive(_tags(stranger))
    assert tracker.get_run(fold).data.tags["ftsweep.error"] == f"its process ({owner[OWNER_TAG]}) is gone; the sweep stopped"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
