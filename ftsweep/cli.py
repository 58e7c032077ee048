"""What every Hydra entry point shares: error reporting, signals, multirun awareness."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from ftsweep.errors import FtsweepError

log = logging.getLogger("ftsweep")
T = TypeVar("T")
DEBUG = os.environ.get("FTSWEEP_DEBUG", "") not in ("", "0")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def job_number() -> int:
    """The job's index in its sweep (0 for single runs): orders rows like the command did."""
    return int(HydraConfig.get().job.get("num", 0) or 0) if HydraConfig.initialized() else 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C: open runs are marked KILLED


def guarded(job: Callable[[], T], failed_value: T) -> T:
    """Run `job`; turn user errors into one line and exit 2 (or, in a multirun, a logged
    failure that lets the other jobs go on). FTSWEEP_DEBUG=1 shows tracebacks."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _sigterm)
        except ValueError:  # not the main thread (some launchers)
            pass
    try:
        return job()
    except FtsweepError as exc:
        if DEBUG:
            raise
        if in_multirun():
            log.error("job failed: %s", exc)
            return failed_value
        print(f"ftsweep: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("ftsweep: interrupted; finished folds stay logged, open runs are marked KILLED.", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if in_multirun() and not DEBUG:
            log.exception("job failed (the other jobs go on): %s", exc)
            return failed_value
        raise
