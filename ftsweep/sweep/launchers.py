"""A sweep job's process that dies (kill -9, the out-of-memory killer, a SLURM job that ends
without a result) is reported by the launcher in its own way: joblib raises
TerminatedWorkerError (and its whole pool of workers goes with it), submitit an
UncompletedJobError naming the SLURM state; Hydra then prints ~40 lines of traceback and never
reaches ftsweep's job report. Those exceptions are recognised here, by name (neither package is
imported), and told in a few words."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

_LOKY_EXIT = re.compile(r"exit codes of the workers are \{(SIG[A-Z0-9]+)\(")  # joblib: {SIGKILL(-9)}
# submitit: "has not produced any output (state: TIMEOUT)"; sacct's state may carry more words,
# as in "CANCELLED by 0" (the uid that ran scancel)
_SLURM_STATE = re.compile(r"\(state: ([A-Z_]+[^)\n]*)\)")
_SLURM_OUT_OF_MEMORY = "OUT_OF_MEMORY"


@dataclass(frozen=True)
class Death:
    how: str  # "died (SIGKILL, often the out-of-memory killer)", "ended without a result (state: TIMEOUT)"
    memory: bool  # what the kernel's or SLURM's out-of-memory killer does
    interrupted: bool = False  # ended by SIGINT: Ctrl-C reached the job before the launching process


def worker_died(exc: BaseException | None) -> Death | None:
    """How a job's process ended when `exc` (or an exception it was raised from) says it ended
    without returning; None for any other error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name, text = type(exc).__name__, str(exc)
        if name == "TerminatedWorkerError":
            found = _LOKY_EXIT.search(text)
            sig = found.group(1) if found and found.group(1) in signal.Signals.__members__ else None
            memory = sig == "SIGKILL"
            return Death(f"died ({sig}, often the out-of-memory killer)" if memory else
                         f"died ({sig})" if sig else "died", memory, sig == "SIGINT")
        if name == "UncompletedJobError":
            found = _SLURM_STATE.search(text)
            state = found.group(1) if found else None
            return Death(f"ended without a result (state: {state})" if state else "ended without a result",
                         state is not None and state.split()[0] == _SLURM_OUT_OF_MEMORY)
        exc = exc.__cause__ or exc.__context__
    return None


def what_to_do(launcher: str, death: Death) -> str:
    """The advice for a sweep whose job died under `launcher` (hydra/launcher's choice)."""
    if not death.memory:
        return "its log says why (the job folder under hydra.sweep.dir)"
    if launcher.startswith("submitit"):
        return "if memory ran out, raise hydra.launcher.mem_gb or lower trainer.batch_size"
    return "if memory ran out, lower hydra.launcher.n_jobs or trainer.batch_size"
