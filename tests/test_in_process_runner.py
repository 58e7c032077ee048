"""The runner that executes `python -m ftsweep ...` inside the test process (in_process.py): a call
that outlives the timeout a process of its own would get ends this process with every thread's
stack, where it used to hang the suite until CI's limit."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT, cli_env

HANG = """
import sys, time
sys.path.insert(0, {tests!r})
import in_process
in_process._main = lambda module, err: time.sleep(120)  # a call that never returns
in_process.run("ftsweep", [], {cwd!r}, dict(__import__("os").environ), timeout=5)
print("returned", flush=True)
"""


def test_an_in_process_call_past_its_timeout_ends_the_process_with_its_stacks(tmp_path):
    done = subprocess.run([sys.executable, "-c", HANG.format(tests=str(ROOT / "tests"), cwd=str(tmp_path))],
                          capture_output=True, text=True, env=cli_env(), timeout=110)
    assert done.returncode == 1 and "returned" not in done.stdout, done.stderr[-2000:]
    # where the timer found it varies with the machine's load (setting up, or in the call): the runner's frame is there
    assert "Timeout (0:00:05)!" in done.stderr and 'in_process.py", line' in done.stderr, done.stderr[-2000:]
