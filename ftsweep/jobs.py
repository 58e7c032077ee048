"""What every Hydra entry point shares: error reporting, signals, multirun awareness."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from ftsweep.errors import FtsweepError

log = logging.getLogger("ftsweep")
T = TypeVar("T")
DEBUG = os.environ.get("FTSWEEP_DEBUG", "") not in ("", "0")
ORPHAN_GRACE = 20.0  # seconds a job whose launcher died gets to mark its runs KILLED


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def job_number() -> int:
    """The job's index in its sweep (0 for single runs): orders rows like the command did."""
    return int(HydraConfig.get().job.get("num", 0) or 0) if HydraConfig.initialized() else 0


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
        print(f"ftsweep: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def unreadable_override(text: str, exc: Exception) -> str:
    """Hydra's parse error in one line: its reason, not its 'Error parsing override' header."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error parsing") else lines[0]
    return (f"cannot read the override {text!r}: {reason} (Hydra's override grammar: "
            f"https://hydra.cc/docs/advanced/override_grammar/basic/)")


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C: open runs are marked KILLED


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
_orphaned = threading.Event()


def exit_with_launcher() -> None:
    """Parallel local launchers (joblib's loky workers, submitit_local) run jobs in child
    processes that outlive a killed driver for minutes. Watch the parent: when it is gone,
    SIGTERM this process (its open runs become KILLED), and exit for good after a grace."""
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        _orphaned.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE)
        os._exit(143)

    threading.Thread(target=watch, name="ftsweep-orphan-watch", daemon=True).start()


def guarded(job: Callable[[], T], failed_value: T) -> T:
    """Run `job`; turn user errors into one line and exit 2 (or, in a multirun, a logged
    failure that lets the other jobs go on). FTSWEEP_DEBUG=1 shows tracebacks."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _sigterm)
        except ValueError:  # not the main thread (some launchers)
            pass
    multirun = in_multirun()
    if multirun:
        from ftsweep.train.devices import parallel_local

        if parallel_local():
            exit_with_launcher()
    try:
        return job()
    except FtsweepError as exc:
        if DEBUG:
            raise
        return _failed(str(exc), exc.exit_code, failed_value, multirun)
    except KeyboardInterrupt:
        print("ftsweep: interrupted; finished folds stay logged, open runs are marked KILLED.", file=sys.stderr)
        if _orphaned.is_set():
            os._exit(130)  # a launcher's worker would catch SystemExit and wait for work that never comes
        sys.exit(130)
    except Exception as exc:
        if DEBUG:
            raise
        if disk_full(exc):
            return _failed(f"the disk is full ({str(exc).splitlines()[0][:200]}); free some space and rerun "
                           f"the same command: finished folds are kept.", 1, failed_value, multirun)
        if multirun:
            log.exception("job failed (the other jobs go on): %s", exc)
            _record("failed", f"{type(exc).__name__}: {exc}")
            return failed_value
        raise


def _failed(message: str, exit_code: int, failed_value: T, multirun: bool) -> T:
    if multirun:
        log.error("job failed: %s", message)
        _record("failed", message)
        return failed_value
    print(f"ftsweep: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def _record(status: str, detail: str) -> None:
    from ftsweep.sweep.callback import record_job

    record_job(status, detail)
