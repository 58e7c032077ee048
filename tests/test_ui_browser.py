"""The link ftsweep prints, opened in a real (headless) browser against `make ui`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ftsweep.cv.pipeline import Job, run_cv
from ftsweep.sweep.table import write_table
from ftsweep.tracking.store import Tracker

from helpers import ROOT, free_port, stop_group, wait_for_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# A developer without Chromium gets a skip; CI (CI=true), whose .ci/run installs it, gets a failure instead.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                                   reason="no chromium: `make browser` installs Debian's")]
DOCS_SHOT = ROOT / "docs" / "mlflow-runs.png"  # FTSWEEP_UPDATE_DOCS=1 refreshes the README's screenshot


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=20000", "--run-all-compositor-stages-before-draw"]
    with_profile = [f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp')) / f'ftsweep-chrome-{os.getpid()}'}"]
    return subprocess.run([CHROMIUM, *flags, *with_profile, *args], capture_output=True, text=True, timeout=timeout)


class RunsTable(HTMLParser):
    """The rows MLflow's run table (an AG Grid) rendered: {run id: (row index, {column id: text})}.
    A row is drawn once per pinned / scrolling part, each with the run id and row index."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, dom: str):
        super().__init__()
        self.rows: dict[str, tuple[int, dict[str, str]]] = {}
        self._open: list[tuple[str, dict]] = []
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self._open.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        row = next((a for _, a in reversed(self._open) if a.get("role") == "row" and "row-id" in a), None)
        cell = next((a["col-id"] for _, a in reversed(self._open) if a.get("role") == "gridcell" and "col-id" in a), None)
        if row is not None and cell is not None:
            _, cells = self.rows.setdefault(row["row-id"], (int(row["row-index"]), {}))
            cells[cell] = cells.get(cell, "") + data

    def in_order(self) -> list[tuple[str, dict[str, str]]]:
        return [(run_id, cells) for run_id, (_, cells) in sorted(self.rows.items(), key=lambda item: item[1][0])]


# Made in this order, these three tiny runs rank adamw (1.011) < cls (1.017) < llrd (1.022) by mean RMSE:
# neither the creation order (either way) nor the names' (either way), so only a sort by rmse_mean passes.
CONFIGS = ("optimizer=llrd", "optimizer=adamw", "head=cls")


def test_the_printed_link_opens_the_runs_table(make_cfg, tmp_path):
    assert CHROMIUM is not None, "CI runs `make browser` before the suite: Chromium must be there"
    results = [run_cv(make_cfg(override, "tracking.experiment=browser"), Job([override])) for override in CONFIGS]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    write_table(Tracker(uri, "browser"), tmp_path / "table")  # a results-table run: not a config's row
    # what the user is promised, from the store: one row per config, best mean CV RMSE first
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("browser").experiment_id])
    assert len(runs) == 10  # 3 parents, 6 folds, the results table
    parents = [r for r in runs if "ftsweep.fold" not in r.data.tags and "ftsweep.kind" not in r.data.tags]
    assert {r.info.run_id for r in parents} == {r.parent_run_id for r in results}
    expected = sorted(parents, key=lambda r: r.data.metrics["rmse_mean"])
    by_start, by_name = (sorted(parents, key=lambda r: r.info.start_time), sorted(parents, key=lambda r: r.info.run_name))
    other_orders = [[r.info.run_id for r in order] for order in (by_start, by_start[::-1], by_name, by_name[::-1])]
    assert [r.info.run_id for r in expected] not in other_orders  # only the sort by rmse_mean gives this order
    (data_file,) = (tmp_path / "data").glob("*.csv")
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
        # wide enough that the grid draws every column (it leaves out those outside the window)
        rows = RunsTable(_chromium("--window-size=3840,1000", "--dump-dom", link).stdout).in_order()
        assert [run_id for run_id, _ in rows] == [r.info.run_id for r in expected]
        for (_, cells), run in zip(rows, expected, strict=True):
            assert cells["attributes.`Run Name`"].endswith(run.info.run_name), cells  # after the colour swatch
            assert float(cells["metrics.`rmse_mean`"]) == pytest.approx(run.data.metrics["rmse_mean"], rel=1e-12)
            digest = run.data.tags["ftsweep.data_fingerprint"][:16]
            assert cells["attributes.`Dataset`"].strip().startswith(f"{data_file.stem} ({digest})"), cells
        shot = tmp_path / "runs.png"
        _chromium("--window-size=1920,800", f"--screenshot={shot}", link)
        assert shot.exists() and shot.stat().st_size > 20000
        if os.environ.get("FTSWEEP_UPDATE_DOCS"):
            shutil.copy(shot, DOCS_SHOT)
    finally:
        stop_group(ui)
