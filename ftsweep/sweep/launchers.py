"""A sweep job's process that dies (kill -9, the out-of-memory killer) is reported by the launcher
in its own way: joblib raises TerminatedWorkerError for the whole batch, submitit an
UncompletedJobError; Hydra then prints ~40 lines of traceback and never reaches ftsweep's job
report. Those exceptions are recognised here (by name: neither package is imported) and told in
a few words."""

from __future__ import annotations

import re
import signal

# joblib/loky, concurrent.futures, submitit: a worker or job that ended without returning
DIED = {"TerminatedWorkerError", "BrokenProcessPool", "UncompletedJobError"}
_SIGNAL = re.compile(r"\b(SIG[A-Z]+)\b|\bsignal (\d+)|\((-\d+)\)")


def worker_died(exc: BaseException | None) -> str | None:
    """'died (SIGKILL, often the out-of-memory killer)' when `exc` (or its cause) says a job's
    process ended without returning; None for any other error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in DIED:
            name = _signal_name(str(exc))
            if name is None:
                return "died"
            return f"died ({name}, often the out-of-memory killer)" if name == "SIGKILL" else f"died ({name})"
        exc = exc.__cause__ or exc.__context__
    return None


def _signal_name(text: str) -> str | None:
    match = _SIGNAL.search(text)
    if match is None:
        return None
    if match.group(1):
        return match.group(1)
    try:
        return signal.Signals(abs(int(match.group(2) or match.group(3)))).name
    except ValueError:
        return None


def launcher_name(launcher_target: str) -> str:
    """hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher -> joblib."""
    name = launcher_target.rsplit(".", 1)[-1]
    return name.removesuffix("Launcher").lower() or "the launcher"
