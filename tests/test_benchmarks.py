"""The benchmark scripts run end to end at smoke size and print their numbers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_throughput_smoke():
    text = _run("benchmarks/throughput.py", "--smoke")
    for label in ("ftsweep", "plain loop (pad 64)", "HF Trainer (pad 64)"):
        assert re.search(rf"{re.escape(label)}\s+[\d.]+ samples/s", text), text
    assert re.search(r"ftsweep / HF Trainer\s+[\d.]+x", text)
    assert re.search(r"frequent evaluation adds\s+[+-][\d.]+ %", text)
    assert re.search(r"\[3\] full CV: .*\n\s+wall time\s+[\d.]+ s", text)


def test_lr_logging_overhead_smoke():
    text = _run("benchmarks/lr_logging_overhead.py", "--repeats", "1", "model=tiny", "data.max_rows=64",
                "trainer.max_length=32")
    assert re.search(r"overhead \(wall, noisy\)\s+:\s+[+-][\d.]+ %", text), text
    assert re.search(r"time in LR logging calls\s+:\s+[\d.]+ s = [\d.]+ % of the fold", text)
