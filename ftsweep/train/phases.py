"""A PhaseTimer that measures: where a fold's (or a whole CV run's) time goes, phase by phase.

Host time is self time: a phase nested in another (batching inside forward_backward, an
MLflow call inside logging) counts only once, in the innermost phase, so the phases add up
to at most the wall time and the rest is time outside every phase. On CUDA, the phases in
`device_phases` also get device time: a pair of CUDA events around each occurrence, read
once in `summary()` (one sync at the end, none per step). Device time between two events is
the GPU's time from the phase's first queued kernel to its last, idle gaps included: close to
the host time when launching kernels is the bottleneck, larger when the GPU is.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

DEVICE_PHASES = ("forward_backward", "optimizer", "evaluation")


class _Span:
    __slots__ = ("clock", "name", "start", "inner", "events")

    def __init__(self, clock: PhaseClock, name: str):
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        clock = self.clock
        self.events = None
        if clock.new_event is not None and self.name in clock.device_phases and not clock.stack:
            self.events = (clock.new_event(), clock.new_event())
            self.events[0].record()
        self.inner = 0.0
        clock.stack.append(self)
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        clock = self.clock
        clock.stack.pop()
        clock.host_s[self.name] += elapsed - self.inner
        clock.count[self.name] += 1
        if clock.stack:
            clock.stack[-1].inner += elapsed
        if self.events is not None:
            self.events[1].record()
            clock.pending.append((self.name, *self.events))


class PhaseClock:
    """`new_event`: makes a timing event (`torch.cuda.Event(enable_timing=True)` on CUDA, None on a CPU)."""

    def __init__(self, new_event: Callable[[], Any] | None = None, device_phases: Iterable[str] = DEVICE_PHASES):
        self.new_event, self.device_phases = new_event, frozenset(device_phases)
        self.host_s: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.device_ms: dict[str, float] = defaultdict(float)
        self.stack: list[_Span] = []
        self.pending: list[tuple[str, Any, Any]] = []

    @classmethod
    def for_device(cls, device) -> PhaseClock:
        if getattr(device, "type", device) != "cuda":
            return cls()
        import torch

        return cls(lambda: torch.cuda.Event(enable_timing=True))

    def phase(self, name: str) -> _Span:
        return _Span(self, name)

    def summary(self, wall_s: float) -> dict:
        """Seconds and count per phase (with device seconds where measured), their share of `wall_s`,
        and the time outside every phase (data, tokenising, set-up, Python between phases)."""
        if self.pending:
            self.pending[-1][2].synchronize()  # events complete in queue order: the last one covers all
            for name, start, end in self.pending:
                self.device_ms[name] += start.elapsed_time(end)
            self.pending.clear()
        phases = {}
        for name in sorted(self.host_s, key=self.host_s.get, reverse=True):
            row = {"s": self.host_s[name], "pct": 100 * self.host_s[name] / wall_s if wall_s else None,
                   "count": self.count[name]}
            if name in self.device_ms:
                row["device_s"] = self.device_ms[name] / 1e3
            phases[name] = row
        return {"wall_s": wall_s, "phases": phases, "outside_phases_s": wall_s - sum(self.host_s.values())}
