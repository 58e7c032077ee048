"""Ctrl-C and SIGTERM wherever they land in `python -m ftsweep`: one line, exit 130 (the whole
command runs inside jobs.interrupts_handled; a job's own interrupt is run_guarded's)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest

from ftsweep import interrupts, jobs
from ftsweep.errors import exit_with
from ftsweep.tags import ERROR_TAG


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


def test_a_second_signal_before_the_clean_up_has_begun_does_not_skip_it(capsys):
    """Ctrl-C twice: the second landed as the first one's handler started (a grid sweep's driver was
    importing what marks the runs KILLED), raised again, and skipped the clean-up: the generic line,
    the runs left RUNNING. Now the process, already interrupted, ignores it."""
    closed = []
    with pytest.raises(SystemExit) as ended, jobs.interrupts_handled():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, before anything is closed
            closed.append("the runs")
            jobs.exit_interrupted("the sweep's own line")
    assert ended.value.code == 130 and closed == ["the runs"]
    assert _last_line(capsys) == "ftsweep: interrupted; what finished stays logged. the sweep's own line"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_long_after_the_previous_one_is_an_interrupt_again(monkeypatch, signum):
    """If the first interrupt was swallowed (a library caught it) and the command goes on, a signal
    more than REPEAT_IGNORED_S later interrupts it as the first would have, clean-up included."""
    monkeypatch.setattr(jobs, "_received", signal.SIGINT)
    monkeypatch.setattr(jobs, "_received_at", time.monotonic() - jobs.REPEAT_IGNORED_S + 5)
    assert jobs._interrupt(signum, None) is None  # within the window: ignored
    monkeypatch.setattr(jobs, "_received_at", time.monotonic() - jobs.REPEAT_IGNORED_S - 1)
    with pytest.raises(KeyboardInterrupt):
        jobs._interrupt(signum, None)
    assert jobs._received == signum and time.monotonic() - jobs._received_at < 5  # a new window


def test_a_job_whose_interrupt_a_library_made_an_error_ends_a_serial_sweep_with_130(monkeypatch, capsys):
    """A serial sweep (the basic launcher) logs a failed job and goes on to the next. A job whose
    Ctrl-C a library turned into another error must not: the user asked to stop."""
    monkeypatch.setattr(jobs, "in_multirun", lambda: True)
    monkeypatch.setattr("ftsweep.train.devices.parallel_local", lambda: False)
    saved = signal.signal(signal.SIGINT, jobs._interrupt)

    def job():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise RuntimeError("the library's own error") from None

    try:
        with pytest.raises(SystemExit) as ended:
            jobs.run_guarded(job, float("nan"))
    finally:
        signal.signal(signal.SIGINT, saved)
    assert ended.value.code == 130 and _last_line(capsys) == jobs.INTERRUPTED


_LEAVING = """
import atexit, sys, threading, time
from pathlib import Path
from ftsweep import jobs

def slow_exit_hook():  # what loky's and MLflow's exit hooks can take on a loaded box
    Path(sys.argv[1]).write_text("leaving")
    time.sleep(600)

def left_running():  # a non-daemon thread: the interpreter joins it before the exit hooks
    Path(sys.argv[1]).write_text("leaving")
    time.sleep(600)

with jobs.interrupts_handled():
    if sys.argv[2] == "exit hook":
        atexit.register(slow_exit_hook)
    else:
        threading.Thread(target=left_running).start()
    jobs.exit_interrupted()  # the command ends interrupted: its line, exit 130
"""


@pytest.mark.parametrize("where", ["exit hook", "thread join"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_command_ends_the_process_at_once_with_130(tmp_path, where, signum):
    """The second Ctrl-C of a joblib grid landed after the first one's line, while the interpreter
    was leaving: the process died by SIGINT (-2) after promising 130. A signal then ends it at once,
    with 130, wherever the interpreter is waiting (an exit hook, a thread it joins)."""
    import subprocess
    import sys
    import time

    from helpers import cli_env

    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", _LEAVING, str(flag), where], env=cli_env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        while not flag.exists() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signum)
        err = proc.communicate(timeout=300)[1]  # the hook alone would take 600 s
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["ftsweep: interrupted; what finished stays logged. Rerun the same command "
                                        "to go on (finished folds are reused)."]


_TEARDOWN = """
import os, signal, sys
from ftsweep import jobs

class TornDownLast:
    def __del__(self, kill=os.kill, pid=os.getpid(), signum=int(sys.argv[1])):
        kill(pid, signum)  # a signal while the interpreter tears its modules down

held = TornDownLast()
with jobs.interrupts_handled():
    jobs.exit_interrupted()
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_ctrl_c_while_the_interpreter_tears_down_keeps_exit_130(signum, code):
    """The second Ctrl-C of a joblib grid could land after the exit hooks, while the interpreter
    destroyed its modules with the default handlers back (about a second in a sweep's driver):
    the process died by SIGINT after its one line had promised 130. Ctrl-C is now ignored there;
    SIGTERM still ends it (what stops a service must be able to end a teardown that hangs)."""
    import subprocess
    import sys

    from helpers import cli_env

    done = subprocess.run([sys.executable, "-c", _TEARDOWN, str(int(signum))], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr


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


def _file_is_free(db) -> bool:
    """Another connection can take the SQLite file for itself (no statement of ours holds it)."""
    probe = sqlite3.connect(db, timeout=0)
    try:
        probe.execute("BEGIN EXCLUSIVE")
        probe.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


@pytest.mark.parametrize("call", ["log_values", "finish"])
def test_a_signal_inside_a_store_call_lands_after_it_and_leaves_the_file_free(migrated_store, monkeypatch, call):
    """SIGTERM in the middle of MLflow's SQL: raised inside SQLAlchemy, it left a half-read
    statement alive in the traceback and the file locked, and the clean-up that marks the runs
    KILLED waited minutes on its own lock (CI's hung search). Now the call ends first."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from ftsweep.tracking.store import Tracker

    tracker = Tracker(migrated_store, "signals")
    run_id = tracker.start_run("run", {})
    monkeypatch.setattr(jobs, "_launcher_worker", False)
    signal.signal(signal.SIGTERM, jobs._interrupt)
    fired: list[str] = []

    def signal_once(conn, cursor, statement, *args):
        if not fired:
            fired.append(statement.split()[0])
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(Engine, "after_cursor_execute", signal_once)
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "log_values":
                tracker.log_values(run_id, {"rmse": 0.5})
            else:
                tracker.finish(run_id, "KILLED", "interrupted")
        free = _file_is_free(migrated_store.removeprefix("sqlite:///"))  # the exception still alive, as in a handler
    finally:
        event.remove(Engine, "after_cursor_execute", signal_once)
    assert fired and free
    run = tracker.get_run(run_id)
    if call == "log_values":
        assert run.data.metrics == {"rmse": 0.5}  # the call that was in flight finished
    else:  # its first store call (the reason) finished; the interrupt came before the status
        assert run.data.tags[ERROR_TAG] == "interrupted" and run.info.status == "RUNNING"


def test_held_signals_wait_for_the_outermost_block_and_other_threads_are_not_held():
    order = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            with interrupts.held():
                assert interrupts.deferred(signal.SIGTERM)
                order.append("inner end")
            order.append("outer end")
    assert order == ["inner end", "outer end"] and not interrupts.deferred(signal.SIGTERM)
    seen = []

    def elsewhere():
        with interrupts.held():
            seen.append(interrupts.deferred(signal.SIGTERM))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [False] and interrupts._pending is None
