"""A fold's step metrics (loss, validation RMSE, per-layer rates) buffered and sent to MLflow
in batches: the training loop's MetricSink for a CV run."""

from __future__ import annotations

import time

import numpy as np
from mlflow.entities import Metric

from ftsweep.tracking.store import Tracker


class FoldSink:
    """Buffers a fold's step metrics; `flush()` sends them in batches."""

    def __init__(self, tracker: Tracker, run_id: str, log_lr: bool = True, flush_at: int = 5000):
        self.tracker, self.run_id, self.flush_at, self.send_lr = tracker, run_id, flush_at, log_lr
        self.buffer: list[Metric] = []
        self._lr_layers: list[str] = []
        self._lr_chunks: list[np.ndarray] = []

    def log_steps(self, key: str, values: np.ndarray, first_step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
        self._maybe_flush()

    def log_lr(self, layers: list[str], rates: np.ndarray, first_step: int) -> None:
        """rates: [steps, layers] -> metrics lr/<layer> at each step."""
        if rates.size == 0:
            return
        self._lr_layers = list(layers)
        self._lr_chunks.append(rates)
        if not self.send_lr:
            return
        now = int(time.time() * 1000)
        for j, layer in enumerate(layers):
            self.buffer += [Metric(f"lr/{layer}", float(v), now, first_step + i) for i, v in enumerate(rates[:, j])]
        self._maybe_flush()

    def lr_history(self) -> tuple[list[str], np.ndarray]:
        """Layer names and the [steps, layers] rates logged so far (for the LR-curve figure)."""
        rates = np.concatenate(self._lr_chunks) if self._lr_chunks else np.zeros((0, len(self._lr_layers)))
        return self._lr_layers, rates

    def _maybe_flush(self) -> None:
        if len(self.buffer) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.tracker.log_metrics(self.run_id, self.buffer)
            self.buffer = []
