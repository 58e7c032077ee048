"""Predictions of a model on tokenised rows: large length-sorted batches under inference_mode, one
device-to-host transfer per batch after all are queued. Validation (train/) and the fold ensemble
(model/ensemble.py) both predict through it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ftsweep.data.batching import Encoded, eval_batches, pad_batch


@torch.inference_mode()
def predict(model: nn.Module, encoded: Encoded, rows: np.ndarray, batch_size: int, multiple: int,
            device: torch.device, autocast_dtype: torch.dtype | None) -> np.ndarray:
    """Predictions for `rows` (in their given order), using large length-sorted batches."""
    was_training = model.training
    model.eval()
    out = np.empty(len(rows), dtype=np.float64)
    position = {row: i for i, row in enumerate(rows)}
    chunks = []
    for batch in eval_batches(np.asarray(rows), encoded.lengths, batch_size):
        ids, mask = pad_batch(encoded, batch, multiple)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            pred = model(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
        chunks.append((batch, pred.float()))
    for batch, pred in chunks:  # one transfer per batch, after all batches are queued
        out[[position[r] for r in batch]] = pred.cpu().numpy()
    model.train(was_training)
    return out
