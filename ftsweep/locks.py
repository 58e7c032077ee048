"""Who holds what, with no MLflow or Optuna in it: a file lock beside a SQLite store, an owner
token per process, its liveness, a heartbeat, and the wait for a stopped sweep's own workers.
Used by tracking (units of work), by search (the study's trials) and by the grid sweeper.

A parent run that is RUNNING belongs to the process named in its owner tag. On the
same machine liveness is exact (the pid exists and started when the token says);
elsewhere (SLURM nodes, a shared server) the owner proves it is alive by renewing a
heartbeat tag, and a heartbeat older than LEASE_SECONDS means the owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

from ftsweep.tags import HEARTBEAT_TAG, OWNER_TAG

HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 180.0  # six missed heartbeats


def clock() -> float:
    """The time leases are written and judged by (tests replace it rather than wait 180 s)."""
    return time.time()


def beat() -> str:
    """A heartbeat tag's value: now, in whole seconds."""
    return f"{clock():.0f}"


def _boot_id() -> str:
    """Tells two machines with one hostname apart (containers, cloned VMs)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()[:8]
    except OSError:
        return "-"


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (state, ppid, ..., start at [19]); [] where unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str:
    """The process's start (clock ticks since boot): a reused pid has another one."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else "-"


@lru_cache(maxsize=1)
def _machine() -> str:
    return f"{socket.gethostname()}/{_boot_id()}"


def owner_token() -> str:
    """machine:pid:start of this process (cached per pid: forked workers get their own)."""
    return f"{_machine()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_alive(tags: dict[str, str]) -> bool:
    """Is the process that holds this run still alive? Runs without an owner count as dead."""
    parts = tags.get(OWNER_TAG, "").rsplit(":", 2)
    if len(parts) != 3 or _pid(parts[1]) is None:
        return False
    machine, pid, started = parts[0], int(parts[1]), parts[2]
    if machine == _machine():
        return _pid_alive(pid, started)
    try:
        last = float(tags.get(HEARTBEAT_TAG, "0"))
    except ValueError:
        return False
    return clock() - last < LEASE_SECONDS


def _pid(text: str) -> int | None:
    """A pid as an owner token writes it (ASCII digits, within Linux's largest pid_max), else None."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 4194304:
        return None
    return int(text)


def _pid_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    fields = _stat(pid)
    if fields[:1] in (["Z"], ["X"]):  # ended, not yet reaped by its parent: it closes nothing more
        return False
    now_started = fields[19] if len(fields) > 19 else "-"
    return started == "-" or now_started == "-" or now_started == started


def _descends_from_me(pid: int) -> bool:
    """Is `pid` a child, grandchild, ... of this process (a launcher's worker, submitit's job)?"""
    for _ in range(64):
        fields = _stat(pid)
        if len(fields) < 2 or not fields[1].isdigit():
            return False
        pid = int(fields[1])
        if pid == os.getpid():
            return True
        if pid <= 1:
            return False
    return False


def end_own_owners(owners: list[dict[str, str]], grace: float, kill: bool = True) -> None:
    """Wait up to `grace` seconds for the processes among `owners` (runs' tags) that descend from
    this one to end; with `kill`, SIGKILL those left (each checked again just before) and wait up
    to 10 s more for them to be gone. After a stop, a launcher's workers close their own runs,
    unless the launcher SIGKILLs them part-way (joblib does, from a thread of its own, on its own
    time): a run may only be marked KILLED once its process is gone, and a check while the worker
    still lived left the run RUNNING."""
    mine = {pid: tags for tags in owners if (pid := _own_pid(tags)) is not None}
    deadline = time.monotonic() + grace
    while mine and time.monotonic() < deadline:
        time.sleep(0.2)
        mine = {pid: tags for pid, tags in mine.items() if owner_alive(tags)}
    if not kill:
        return
    for pid, tags in mine.items():
        if _own_pid(tags) == pid:  # still that process (start time checked), still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0  # a SIGKILLed process is gone within moments
    while any(owner_alive(tags) for tags in mine.values()) and time.monotonic() < deadline:
        time.sleep(0.1)


def _own_pid(tags: dict[str, str]) -> int | None:
    """The owner's pid when it is a live process of this machine that descends from this one. A
    token without the start time (no /proc when it was written) cannot tell a reused pid: never."""
    parts = tags.get(OWNER_TAG, "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _machine() or parts[2] == "-" or (pid := _pid(parts[1])) is None:
        return None
    return pid if pid > 1 and owner_alive(tags) and _descends_from_me(pid) else None


def owner_tags() -> dict[str, str]:
    return {OWNER_TAG: owner_token(), HEARTBEAT_TAG: beat()}


class Heartbeat:
    """Calls `renew()` every `every` seconds (default HEARTBEAT_SECONDS, read when made) on a
    daemon thread until the block ends; a failing renewal (a server restart, say) is retried
    at the next tick, never raised into training."""

    def __init__(self, renew: Callable[[], None], every: float | None = None):
        self._renew, self._every = renew, HEARTBEAT_SECONDS if every is None else every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftsweep-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            try:
                self._renew()
            except Exception:  # noqa: BLE001 (the lease lapses; the run goes on)
                pass


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[bool]:
    """Serialises, across processes on this machine, what must not interleave on one SQLite
    file: creating its schema (a second sweep would fail inside MLflow's migration) and claiming
    units. Yields whether the lock is exclusive (False for server stores: see units.claim)."""
    db = sqlite_path(uri)
    if db is None:
        yield False
        return
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
