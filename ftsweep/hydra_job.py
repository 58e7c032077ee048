"""What Hydra says about the job this process runs (multirun or not, its overrides, its number in
the sweep), and the outcome a multirun job leaves in its folder for the sweep's closing report
(read back by ftsweep.sweep.callback)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger("ftsweep")
JOB_STATUS = "ftsweep_job.json"  # in each job's output folder: how the job ended
SWEEP_ID_ENV = "FTSWEEP_SWEEP_ID"  # set by the sweep's callback: a status file from another sweep is not this one's


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def job_number() -> int:
    """The job's index in its sweep (0 for single runs): orders rows like the command did."""
    return int(HydraConfig.get().job.get("num", 0) or 0) if HydraConfig.initialized() else 0


def record_job(status: str, detail: str = "") -> None:
    """A multirun job's outcome (ok | held | failed), read back when the sweep ends."""
    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / JOB_STATUS).write_text(json.dumps(
            {"sweep": os.environ.get(SWEEP_ID_ENV, ""), "status": status, "detail": detail[:2000]}))
    except OSError as exc:  # a full disk must not turn a finished job into a crash
        log.warning("could not record the job's status in %s: %s", folder, exc)
