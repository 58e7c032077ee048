"""A Hydra callback that holds one job's end back until other jobs have ended: a test of job order
then waits for the event itself instead of making one job long enough (a guess about speed).

Used in a sweep as `+hydra.callbacks.gate._target_=job_gate.HoldJob +hydra.callbacks.gate.folder=...`
with this folder on PYTHONPATH; callbacks run in the job's own process, so a joblib worker holds."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class HoldJob(Callback):
    """The job whose `key` equals `value` does its work, then waits before it returns until
    `others` other jobs have ended, or `seconds` have passed (then it goes on, and the test's order
    check fails instead of hanging). Held at its end, not its start, so that its imports and
    training overlap the others' instead of following them. Every other job leaves a file in
    `folder` at its end; the held job writes `released` there, saying why it went on, so a test
    can check that the gate held at all (a mistyped key holds nothing)."""

    def __init__(self, folder: str, key: str, value, others: int, seconds: float = 300.0) -> None:
        self.folder, self.key, self.value, self.others, self.seconds = Path(folder), key, value, others, seconds

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if OmegaConf.select(config, self.key) != self.value:
            (self.folder / f"ended-{os.getpid()}-{uuid.uuid4().hex}").touch()
            return
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and len(self._ended()) < self.others:
            time.sleep(0.2)
        ended = len(self._ended())
        (self.folder / "released").write_text(f"after {ended} ended" if ended >= self.others else "timed out")

    def _ended(self) -> list[Path]:
        return list(self.folder.glob("ended-*")) if self.folder.is_dir() else []
