"""Ctrl-C and SIGTERM held off while a store call is in flight.

The signal handlers (ftsweep.jobs) raise KeyboardInterrupt wherever the main thread is. Raised
inside MLflow's or Optuna's SQLAlchemy session, it leaves a half-read SQLite statement alive in
the traceback's frames, and with it a lock on the file: the clean-up that marks the open runs
KILLED then waited on its own process's lock (20 s of busy timeout per try, minutes in all). So a
signal that lands inside `held()` is noted and raised as the block ends, once the store has
finished the call. A store call is milliseconds, or the busy timeout where another process holds
the SQLite file: the interrupt waits at most that long.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_depth = 0  # nested held() blocks in the main thread (the only thread that runs signal handlers)
_pending: int | None = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            _pending = None
            raise KeyboardInterrupt


def deferred(signum: int) -> bool:
    """For a signal handler: True when a store call is in flight, and the signal waits for its end."""
    global _pending
    if _depth == 0:
        return False
    _pending = signum
    return True
