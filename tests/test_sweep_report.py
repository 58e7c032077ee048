"""The closing report of a multirun: each job folder is ok, held or failed, and a job that left
no word of how it ended (its process died: kill -9, the OOM killer) counts as failed."""

from __future__ import annotations

import json
import os
import time

import pytest

from ftsweep.hydra_job import JOB_STATUS, SWEEP_ID_ENV
from ftsweep.sweep.callback import SweepCallback, job_outcomes

SWEEP = "this-sweep"
DIED = "the job ended without a result (its process died)"


def _job(sweep_dir, name, record=None, written=None):
    """A job folder as Hydra leaves it (.hydra/*.yaml), with the status file the job wrote, if any;
    `written`: when its .hydra files were written (default: now)."""
    hydra = sweep_dir / name / ".hydra"
    hydra.mkdir(parents=True)
    for file in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (hydra / file).write_text("{}\n")
    if written is not None:
        for path in (*hydra.iterdir(), hydra):
            os.utime(path, (written, written))
    if record is not None:
        (sweep_dir / name / JOB_STATUS).write_text(record if isinstance(record, str) else json.dumps(record))


@pytest.fixture
def sweep_dir(tmp_path):
    """A sweep folder holding every kind of job folder; the sweep started a minute after the old ones."""
    started = time.time() - 5.0
    old = started - 60.0
    _job(tmp_path, "0", {"sweep": SWEEP, "status": "ok", "detail": ""})
    _job(tmp_path, "1", {"sweep": SWEEP, "status": "failed", "detail": "ConfigError: model.lr=-1 must be > 0"})
    _job(tmp_path, "2", {"sweep": SWEEP, "status": "held", "detail": "node7/abcd:1234:99"})
    _job(tmp_path, "3")  # killed before it could write a word
    _job(tmp_path, "4", {"sweep": "an-earlier-sweep", "status": "ok", "detail": ""})  # a reused folder's old word
    _job(tmp_path, "5", '{"sweep": "this-sw')  # killed while writing it
    _job(tmp_path, "6", written=old)  # an earlier sweep's job that this sweep did not launch
    # a reused folder: Hydra rewrote the .hydra files in place, so the folder's own mtime is the old one
    _job(tmp_path, "7", {"sweep": "an-earlier-sweep", "status": "ok", "detail": ""}, written=old)
    (tmp_path / "7" / ".hydra" / "config.yaml").write_text("{}\n")
    (tmp_path / "table").mkdir()  # the results table's folder: not a job
    (tmp_path / "multirun.yaml").write_text("{}\n")
    return tmp_path, started


def test_job_outcomes_count_a_job_that_left_no_status_as_failed(sweep_dir):
    folder, started = sweep_dir
    assert os.stat(folder / "7" / ".hydra").st_mtime < started  # the case a folder's mtime alone would miss
    assert job_outcomes(folder, SWEEP, started) == {
        "ok": ["0"],
        "held": ["2: node7/abcd:1234:99"],
        "failed": ["1: ConfigError: model.lr=-1 must be > 0", f"3: {DIED}", f"4: {DIED}", f"5: {DIED}", f"7: {DIED}"],
    }


def test_the_sweep_exits_1_naming_the_jobs_that_died(sweep_dir, monkeypatch, capsys):
    folder, started = sweep_dir
    monkeypatch.setenv(SWEEP_ID_ENV, SWEEP)
    callback = SweepCallback()
    callback.started = started
    with pytest.raises(SystemExit) as exit_:
        callback._report_jobs(folder)
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out.startswith("ftsweep: 1 of 7 job(s) skipped: another live process is running their config")
    lines = err.splitlines()
    assert lines[0].startswith("ftsweep: error: 5 of 7 sweep job(s) failed; the table holds only what finished.")
    assert lines[1:] == ["  job 1: ConfigError: model.lr=-1 must be > 0", f"  job 3: {DIED}", f"  job 4: {DIED}",
                         f"  job 5: {DIED}", f"  job 7: {DIED}"]
