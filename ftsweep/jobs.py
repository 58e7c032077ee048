"""What every entry point shares: error reporting, signals, multirun awareness, and the servers
the UI commands start (a port tried first, the server's process group stopped as one)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

from ftsweep import interrupts
from ftsweep.errors import FtsweepError, exit_with
from ftsweep.hydra_job import in_multirun, record_job

log = logging.getLogger("ftsweep")
T = TypeVar("T")
DEBUG = os.environ.get("FTSWEEP_DEBUG", "") not in ("", "0")
ORPHAN_GRACE = 20.0  # seconds a job whose launcher died gets to mark its runs KILLED


def check_command_line(argv: list[str], config_name: str = "config") -> None:
    """Before @hydra.main: what Hydra would refuse on this command line (an unreadable override,
    an unknown key or option, a sweep without -m) in one line and exit 2, where Hydra prints
    several lines or a traceback and exits 1 (ftsweep.config.command_line)."""
    from ftsweep.config.command_line import check

    try:
        check(argv, config_name)
    except FtsweepError as exc:
        if DEBUG:
            raise
        exit_with(exc)


_job_running = False
_launcher_worker = False  # this process runs jobs for a parallel local launcher (joblib, submitit_local)
_received: int | None = None  # the signal that interrupted the job
_received_at = 0.0  # when (time.monotonic())
# After a Ctrl-C or SIGTERM a process is on its way out. A second one (people press Ctrl-C twice)
# that raised again could land before the first one's clean-up had begun, and skip it: runs left
# RUNNING, the generic line instead of the sweep's. So a signal this soon after the previous one is
# ignored; a later one is an interrupt of its own (the first was swallowed, or the process goes on).
REPEAT_IGNORED_S = ORPHAN_GRACE + 10.0


def _interrupt(signum, frame):
    """SIGTERM, and SIGINT in a launcher's worker: while a job runs, the same clean-up as Ctrl-C
    (open runs are marked KILLED); a worker between jobs has nothing open and ends at once, where
    a KeyboardInterrupt would surface as a traceback in the launcher's own code. A signal within
    REPEAT_IGNORED_S of the previous one is ignored (a worker already closing its runs ignores
    every later one: the orphan watch's grace bounds it)."""
    global _received, _received_at
    if _launcher_worker and not _job_running:
        _die_by(signum)
    if _received is not None and (_launcher_worker or time.monotonic() - _received_at < REPEAT_IGNORED_S):
        return
    _received, _received_at = signum, time.monotonic()
    if not interrupts.deferred(signum):  # else raised when the store call in flight ends
        raise KeyboardInterrupt


def _die_by(signum: int) -> None:
    """End this process by `signum` itself, as an uncaught signal would: its launcher then reports
    a process ended by SIGTERM/SIGINT (joblib would take a SystemExit for the job's result and keep
    the process)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # not reached: the default action of both signals ends the process


def disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain, or SQLite's own words for it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "database or disk is full" in str(seen) or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_watching = False


def exit_with_launcher() -> None:
    """Parallel local launchers (joblib's loky workers, submitit_local) run jobs in child
    processes. Loky workers outlive a killed driver for minutes: watch the parent, and when it is
    gone SIGTERM this process (its open runs become KILLED) and exit for good after a grace. (A
    submitit_local job's parent is submitit's controller, which outlives the driver: it runs on.)
    SIGINT (and SIGTERM, unless the launcher handles it: submitit does) ends the job's runs KILLED,
    then the process by that signal."""
    global _watching, _launcher_worker
    if _watching:
        return
    _watching = True
    _launcher_worker = True
    try:
        signal.signal(signal.SIGINT, _interrupt)
    except ValueError:  # not the main thread
        pass
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE)
        os._exit(143)

    threading.Thread(target=watch, name="ftsweep-orphan-watch", daemon=True).start()


def guarded(failed_value: T) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A command's task, guarded: user errors become one line and exit 2 (or, in a multirun, a
    logged failure that lets the other jobs go on, the job returning `failed_value`); Ctrl-C and
    SIGTERM close the open runs. FTSWEEP_DEBUG=1 shows tracebacks.

    Example:
        @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
        @guarded(failed_value=float("nan"))
        def main(cfg): ...
    """
    def decorate(task: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(task)
        def run(*args, **kwargs) -> T:
            return run_guarded(lambda: task(*args, **kwargs), failed_value)

        return run

    return decorate


def interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's stop) ends this process as Ctrl-C does, with the same clean-up,
    unless something (a launcher) already handles it."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _interrupt)
        except ValueError:  # not the main thread (some launchers)
            pass


INTERRUPTED = "ftsweep: interrupted; finished folds stay logged, open runs are marked KILLED."


@contextlib.contextmanager
def interrupts_handled() -> Iterator[None]:
    """A command's whole life: Ctrl-C and SIGTERM close what is open and end it with one line, exit
    130, wherever they land, even where a library turned the interrupt into another error; after
    the command, they end the process at once, still with 130 (and once the exit hooks have run,
    Ctrl-C is ignored: see _ignore_signals)."""
    global _ignore_at_teardown
    if not _ignore_at_teardown:  # registered before the libraries' own exit hooks, so it runs after them
        atexit.register(_ignore_signals)
        _ignore_at_teardown = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        exit_interrupted()
    except SystemExit as exc:
        if _received is not None and exc.code not in (0, 130, None):
            exit_interrupted()  # an error the interrupt caused part-way through a library's code
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _leave_now)


_ignore_at_teardown = False


def _ignore_signals() -> None:
    """The last exit hook. After the exit hooks the interpreter resets every handler written in
    Python to the default, then tears its modules down (about a second for a sweep's driver):
    a second Ctrl-C then killed it by SIGINT, not 130. An ignored signal is left ignored. SIGTERM
    keeps its default: what stops a service (systemd, SLURM) can still end a teardown that hangs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _leave_now(signum, frame):
    """After the command the process is only leaving (joblib's and MLflow's exit hooks): a signal
    then ends it at once, with the interrupt's exit code 130 (a second Ctrl-C used to end it by
    SIGINT, after its one line had promised 130); nothing is left half-done by a raised exception."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:  # noqa: BLE001 (a closed or full pipe, a second signal mid-flush: leave anyway)
        pass
    finally:
        os._exit(130)


def exit_interrupted(what: str = "Rerun the same command to go on (finished folds are reused).") -> NoReturn:
    """Ctrl-C or SIGTERM outside a job: one line, exit 130; a second signal cannot cut it short."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    print(f"ftsweep: interrupted; what finished stays logged. {what}", file=sys.stderr, flush=True)
    sys.exit(130)


def run_guarded(job: Callable[[], T], failed_value: T) -> T:
    """`job()` under guarded()'s rules."""
    global _job_running, _received
    interrupt_on_sigterm()
    multirun = in_multirun()
    if multirun:
        from ftsweep.train.devices import parallel_local

        if parallel_local():
            exit_with_launcher()
    _job_running = True
    try:
        return job()
    except FtsweepError as exc:
        if DEBUG:
            raise
        return _failed(str(exc), exc.exit_code, failed_value, multirun)
    except KeyboardInterrupt:
        if _launcher_worker:  # the launching process says it, once, for the whole sweep (see finally)
            _received = _received or signal.SIGINT
        else:
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(130)
    except Exception as exc:
        if DEBUG:
            raise
        if _received is not None and not _launcher_worker:  # a library made an error of the interrupt
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(130)
        if disk_full(exc):
            return _failed(f"the disk is full ({str(exc).splitlines()[0][:200]}); free some space and rerun "
                           f"the same command: finished folds are kept.", 1, failed_value, multirun)
        if multirun:
            log.exception("job failed (the other jobs go on): %s", exc)
            record_job("failed", f"{type(exc).__name__}: {exc}")
            return failed_value
        raise
    finally:
        _job_running = False
        if _launcher_worker and _received is not None:
            # however the job ended after the signal (even inside a handler above): by that signal
            _die_by(_received)


def _failed(message: str, exit_code: int, failed_value: T, multirun: bool) -> T:
    if multirun:
        log.error("job failed: %s", message)
        record_job("failed", message)
        return failed_value
    exit_with(message, exit_code)


# Servers a command starts (the MLflow UI, Optuna Dashboard)

def port_problem(host: str, port: int, other: str) -> str | None:
    """Why the server could not listen on host:port (None: it can), found out by binding it."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind(address)
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return (f"cannot serve on {host}:{port} ({why}; {other} may be running there); pick a free port with "
                f"--port, e.g. --port {port + 1 if 0 < port < 65535 else 5001}.")
    return None


def serve(command: list[str], name: tuple[str, str], grace: float = 10.0) -> int:
    """Run a server (`python -m ftsweep.ui`, `python -m ftsweep.dashboard`) in a process group of its
    own and stop the whole group (say the MLflow UI and its uvicorn worker) on SIGTERM, SIGINT or
    SIGHUP to this process: `mlflow ui` alone, killed, leaves its worker serving the port. Killed itself (SIGKILL), this process cannot forward: the
    server then gets SIGTERM from the kernel (Linux) and stops its worker. Its output is passed on
    until a signal comes (then its shutdown's lines are dropped); Ctrl-C (SIGINT) stops it with
    SIGTERM, a quiet stop, and is one line (`name`: the command and its server), exit 130. A server
    still up `grace` seconds after a stop is killed. Returns the server's exit code (128 + the
    signal when stopped)."""
    server = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with(os.getpid()),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    received: list[int] = []
    threading.Thread(target=_pass_on, args=(server.stdout, received), daemon=True).start()
    stop_asked: list[float] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        stop_asked.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            code = server.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:  # uvicorn's graceful stop waits for open connections without end
            if stop_asked and time.monotonic() - stop_asked[0] > grace:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
    # The server may end before its worker: wait for the group, then KILL what is left.
    deadline = time.monotonic() + grace
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(server.pid, 0)
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
    if received and received[0] == signal.SIGINT:
        print(f"{name[0]}: interrupted; {name[1]} is stopped.", file=sys.stderr, flush=True)
    return 128 + received[0] if received else (128 - code if code < 0 else code)


def _pass_on(pipe, received: list[int]) -> None:
    """The server's output onto this process's stderr, line by line, until a signal came."""
    for line in iter(pipe.readline, b""):
        if not received:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()


def _die_with(parent: int):
    """A preexec_fn: the server gets SIGTERM when `parent` dies, however it dies (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing)."""
    def arrange() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)
    return arrange
