"""Ctrl-C and SIGTERM wherever they land in `python -m ftsweep`: one line, exit 130 (the whole
command runs inside jobs.interrupts_handled; a job's own interrupt is run_guarded's)."""

from __future__ import annotations

import os
import signal

import pytest

from ftsweep import jobs
from ftsweep.errors import exit_with


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    """The module's signal bookkeeping as a new process has it; the test's own handlers kept."""
    monkeypatch.setattr(jobs, "_received", None)
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_anywhere_in_the_command_is_one_line_and_exit_130(capsys, signum):
    reached = []
    with pytest.raises(SystemExit) as ended, jobs.interrupts_handled():
        os.kill(os.getpid(), signum)  # the handler runs here, in this (the main) thread
        reached.append("after the signal")
    assert ended.value.code == 130 and reached == []
    assert _last_line(capsys) == ("ftsweep: interrupted; what finished stays logged. Rerun the same command to go "
                                  "on (finished folds are reused).")


def test_an_error_a_library_made_of_the_interrupt_is_still_reported_as_the_interrupt(capsys):
    """A KeyboardInterrupt inside a library's code can leave its state half-changed, and the
    next call fails with some other error (seen: OmegaConf's, while a search wrote best.yaml).
    The user pressed Ctrl-C: that is what the command says, exit 130, not exit 1 and the error."""
    with pytest.raises(SystemExit) as ended, jobs.interrupts_handled():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass  # swallowed by the library
        exit_with("cannot compose the config: 'NoneType' object has no attribute '_invalidate_flags_cache'", 1)
    assert ended.value.code == 130
    assert _last_line(capsys).startswith("ftsweep: interrupted;")


def test_errors_without_an_interrupt_keep_their_line_and_code(capsys):
    with pytest.raises(SystemExit) as ended, jobs.interrupts_handled():
        exit_with("data.path: no such file", 2)
    assert ended.value.code == 2 and _last_line(capsys) == "ftsweep: error: data.path: no such file"


def test_after_the_command_a_signal_ends_the_process_by_the_default_action():
    """Python runs no handler once the interpreter shuts down: a SIGTERM landing then (a search
    that had just finished) left the process hanging; now the kernel ends it at once."""
    with jobs.interrupts_handled():
        assert signal.getsignal(signal.SIGTERM) is jobs._interrupt
        assert signal.getsignal(signal.SIGINT) is jobs._interrupt
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL


def test_a_search_interrupted_between_trials_says_how_to_go_on(capsys, monkeypatch):
    """Outside a trial's job (asking the study, writing the summary) the sweeper says it."""
    from omegaconf import OmegaConf

    import ftsweep.search.sweeper
    from hydra_plugins.ftsweep_optuna_sweeper import optuna_sweeper

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ftsweep.search.sweeper, "search", interrupted)
    sweeper = optuna_sweeper.OptunaSweeper()
    sweeper.config = OmegaConf.create({"hydra": {"sweeper": {}}})
    sweeper.launcher, sweeper.hydra_context = object(), type("Context", (), {"config_loader": None})()
    with pytest.raises(SystemExit) as ended:
        sweeper.sweep([])
    assert ended.value.code == 130
    assert _last_line(capsys) == ("ftsweep: interrupted; what finished stays logged. Rerun the same command to go on "
                                  "with the study (an interrupted trial runs again and keeps its finished folds).")
