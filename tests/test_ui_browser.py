"""The link ftsweep prints, opened in a real (headless) browser against `make ui`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ftsweep.cv.pipeline import Job, run_cv

from conftest import ROOT, free_port, wait_for_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make browser` installs Debian's")]
DOCS_SHOT = ROOT / "docs" / "mlflow-runs.png"  # FTSWEEP_UPDATE_DOCS=1 refreshes the README's screenshot


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=20000", "--run-all-compositor-stages-before-draw"]
    with_profile = [f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp')) / f'ftsweep-chrome-{os.getpid()}'}"]
    return subprocess.run([CHROMIUM, *flags, *with_profile, *args], capture_output=True, text=True, timeout=timeout)


def test_the_printed_link_opens_the_runs_table(make_cfg, tmp_path):
    results = [run_cv(make_cfg(f"optimizer={name}", "tracking.experiment=browser"), Job([f"optimizer={name}"]))
               for name in ("adamw", "llrd")]
    port = free_port()
    ui = subprocess.Popen(["make", "-s", "ui", f"OUTPUTS={tmp_path}", f"UI_PORT={port}"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        link = None
        deadline = time.time() + 90
        while time.time() < deadline and link is None:
            line = ui.stdout.readline()
            found = re.search(r"browser: (http://\S+viewStateShareKey=\S+)", line)
            link = found.group(1) if found else None
        assert link and "workflowType=machine_learning" in link, "make ui printed no link"
        assert wait_for_server(f"http://127.0.0.1:{port}", max(1.0, deadline - time.time()))
        dom = _chromium("--dump-dom", link).stdout
        for result in results:  # both rows, by their run names, with their mean RMSE
            assert f"{result.mean():.4f}"[:5] in dom or f"{result.mean():.3f}" in dom, result.mean()
        assert "optimizer=adamw" in dom and "optimizer=llrd" in dom
        assert "rmse_mean" in dom
        shot = tmp_path / "runs.png"
        _chromium("--window-size=1920,800", f"--screenshot={shot}", link)
        assert shot.exists() and shot.stat().st_size > 20000
        if os.environ.get("FTSWEEP_UPDATE_DOCS"):
            shutil.copy(shot, DOCS_SHOT)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
