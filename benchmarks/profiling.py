"""Reading a torch.profiler trace without double counting, and timing every call into a class.

Pure functions over profiler events (FunctionEvent-like objects: `device_type`, `name`,
`time_range.start/end` in µs), so they are tested on the CPU with a recorded or made-up trace.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterable, Iterator


def _is_device(event) -> bool:
    # Kernels, memcpys and memsets are the events on the device; a CPU op that launched a kernel
    # carries that kernel's time too (its self_device_time_total), so summing every event's device
    # time counts each kernel twice: only the device events themselves are counted. A record_function
    # range (the optimizer step, a profiler step) also shows on the device timeline, as a user
    # annotation spanning its first to last kernel, gaps included: not device work either.
    kind = getattr(event, "device_type", None)
    return getattr(kind, "name", str(kind)) != "CPU" and not getattr(event, "is_user_annotation", False)


def device_busy(events: Iterable, wall_us: float) -> dict:
    """How long the device was busy while the profiled steps ran: the union of the device events'
    time ranges (kernels on several streams at once count once), over `wall_us`."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if _is_device(e))
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return {"busy_us": busy, "busy_pct": 100 * busy / wall_us if wall_us > 0 else None, "device_events": len(spans)}


def top_device_ops(events: Iterable, n: int = 8) -> dict[str, float]:
    """Device time per kernel name (µs), the costliest `n`: device events only, each counted once."""
    totals: dict[str, float] = {}
    for e in events:
        if _is_device(e):
            totals[e.name] = totals.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    return dict(sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:n])


@contextlib.contextmanager
def timed_methods(cls: type, timer, phase: str) -> Iterator[None]:
    """Every call into `cls`'s own methods (its constructor too) runs inside `timer.phase(phase)`
    while the block lasts; a method that calls another is timed once. Used on ftsweep's MLflow
    Tracker, the one door to MLflow, to measure a run's MLflow time without touching its code."""
    depth = [0]

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            try:
                with timer.phase(phase):
                    return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return timed

    originals = {name: fn for name, fn in vars(cls).items()
                 if inspect.isfunction(fn) and (name == "__init__" or not name.startswith("__"))}
    try:
        for name, fn in originals.items():
            setattr(cls, name, wrap(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(cls, name, fn)
