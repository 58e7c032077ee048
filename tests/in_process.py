"""`python -m <module> args` run inside the test process, as the interpreter would run it: the
module's `__main__` code through runpy, with the child's argv, working directory, environment,
one torch thread, a fresh Hydra, Python's default warning filters, stdout and stderr captured,
and its exit code. Everything it changes in this process is put back afterwards.

Why: every new process spends 5-10 s importing torch, transformers and MLflow, the larger part of
a tiny run, and the suite runs dozens. What a separate process would add is tested elsewhere, on
its own: signals, parallel launchers (their workers are processes whatever the driver is), runs
that must overlap in time (test_resume_safety). FTSWEEP_TEST_SUBPROCESS=1 sends every call to a process of its own."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from pathlib import Path

MODULES = {"ftsweep", "ftsweep.table", "ftsweep.predict", "ftsweep.plan"}
# a launcher whose jobs run in other processes: the driver must be a real `python -m` for them
OWN_PROCESS_LAUNCHERS = ("hydra/launcher=joblib", "hydra/launcher=submitit")
ALL_IN_SUBPROCESSES = "FTSWEEP_TEST_SUBPROCESS"


def fits(module: str, args: tuple[str, ...] | list[str]) -> bool:
    return (module in MODULES and os.environ.get(ALL_IN_SUBPROCESSES, "") in ("", "0")
            and threading.current_thread() is threading.main_thread()  # signal handlers are set here
            and not any(arg.startswith(OWN_PROCESS_LAUNCHERS) for arg in args))


def run(module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`timeout`: what a process of its own would have been given. A call still running then is a
    hang (a subprocess would be killed and the test fail): this process prints every thread's
    stack to its real stderr and exits, which pytest-xdist reports as the test's failure ("worker
    crashed") and replaces the worker, instead of the suite hanging until CI's limit."""
    out, err = io.StringIO(), io.StringIO()
    faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__)
    try:
        with _as_a_new_process(args, cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _default_warnings():
            code = _main(module, err)
    finally:
        faulthandler.cancel_dump_traceback_later()
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue())


def _main(module: str, err: io.StringIO) -> int:
    """The exit code the interpreter would give: SystemExit's code, 1 after a traceback."""
    # a module imported earlier in this process would make runpy warn (a new interpreter has none)
    imported = {name: sys.modules.pop(name) for name in (module, f"{module}.__main__") if name in sys.modules}
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=err)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc(file=err)
        return 130
    except Exception:  # noqa: BLE001 (what the interpreter prints for an uncaught error)
        traceback.print_exc(file=err)
        return 1
    finally:
        sys.modules.update(imported)
    return 0


@contextlib.contextmanager
def _as_a_new_process(args: list[str], cwd: Path, env: dict[str, str]):
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from ftsweep import jobs

    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    saved_signals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    saved_threads, saved_logging, saved_torch = torch.get_num_threads(), _logging_state(), _torch_state()
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["-m", *args]  # runpy puts the module's file first, as `python -m` does
    os.chdir(cwd)
    torch.set_num_threads(1)  # the children's OMP_NUM_THREADS=1 (cli_env)
    jobs._received, jobs._job_running = None, False
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        _restore_logging(saved_logging)
        _restore_torch(saved_torch)
        torch.set_num_threads(saved_threads)
        for signum, handler in saved_signals.items():
            signal.signal(signum, handler)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def _default_warnings():
    """A new interpreter's filters (plus its -W / PYTHONWARNINGS), shown on sys.stderr: pytest
    records warnings instead, and a warning already shown in this process would not show again."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category in (("ignore", ResourceWarning), ("ignore", ImportWarning),
                                 ("ignore", PendingDeprecationWarning), ("ignore", DeprecationWarning)):
            warnings.filterwarnings(action, category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        for option in filter(None, os.environ.get("PYTHONWARNINGS", "").split(",")):
            warnings._setoption(option)  # what the interpreter does with PYTHONWARNINGS
        warnings.showwarning = _to_stderr
        yield


def _to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _torch_state() -> tuple:
    """Process-wide switches a command may turn for its own life (predict turns autograd off)."""
    import random

    import numpy as np
    import torch

    return (torch.is_grad_enabled(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
            torch.get_float32_matmul_precision(), torch.get_rng_state(), np.random.get_state(), random.getstate())


def _restore_torch(saved: tuple) -> None:
    import random

    import numpy as np
    import torch

    grad, dtype, deterministic, precision, rng, np_rng, py_rng = saved
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_float32_matmul_precision(precision)
    torch.set_rng_state(rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


def _logging_state() -> dict:
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return {logger: (logger.level, list(logger.handlers), logger.propagate, logger.disabled) for logger in loggers}


def _restore_logging(saved: dict) -> None:
    """Hydra configures logging for each job (handlers on this run's stdout); the test process
    gets its own back, and loggers made during the run lose the run's handlers."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(logger, logging.Logger):
            continue
        level, handlers, propagate, disabled = saved.get(logger, (logging.NOTSET, [], True, False))
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled
