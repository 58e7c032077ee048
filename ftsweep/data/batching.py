"""Tokenise once per run; cut rows into padded batches with a bounded set of shapes.

Training batches are grouped by length (shuffle, sort inside mega-batches, shuffle
the batches) so little compute goes to padding; evaluation batches are sorted by
length. Padding goes to a multiple of ``pad_to_multiple_of`` so few distinct
shapes appear (each new shape costs a fresh kernel plan on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MEGABATCH = 50  # batches per length-sorted group in training order


@dataclass
class Encoded:
    ids: list[np.ndarray]  # token ids of each row, special tokens included, no padding
    lengths: np.ndarray
    n_truncated: int
    pad_id: int


def encode(texts: list[str], tokenizer, max_length: int) -> Encoded:
    """Tokenise every text once; cut to max_length keeping the closing special token."""
    full = tokenizer(list(texts), truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    closing = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    ids, n_truncated = [], 0
    for row in full:
        if len(row) > max_length:
            n_truncated += 1
            row = row[: max_length - 1] + [row[-1]] if row[-1] == closing else row[:max_length]
        ids.append(np.asarray(row, dtype=np.int64))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, np.array([len(r) for r in ids]), n_truncated, pad_id)


def pad_batch(encoded: Encoded, rows: np.ndarray, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(encoded.lengths[rows].max())
    width = -(-width // multiple) * multiple
    input_ids = np.full((len(rows), width), encoded.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = encoded.lengths[row]
        input_ids[i, :n] = encoded.ids[row]
        mask[i, :n] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def train_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of length-grouped batches in random order (every row once)."""
    order = rng.permutation(rows)
    batches = []
    span = batch_size * MEGABATCH
    for start in range(0, len(order), span):
        group = order[start : start + span]
        group = group[np.argsort(-lengths[group], kind="stable")]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = rows[np.argsort(-lengths[rows], kind="stable")]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches of batch_size per epoch (optimizer steps unless trainer.grad_accum_steps > 1: see plan_steps)."""
    return -(-n_rows // batch_size)
