"""Stratified k-fold on a binned continuous target.

The fold seed is its own knob (cv.fold_seed): changing the training seed must
never move a row to another fold, or seed sweeps would compare different splits.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

log = logging.getLogger("ftsweep")


def n_bins_for(n_rows: int) -> int:
    """Sturges' rule, the usual choice for CommonLit: floor(1 + log2 n)."""
    return int(math.floor(1 + math.log2(n_rows)))


def target_bins(targets: np.ndarray, n_bins: int, n_folds: int) -> np.ndarray:
    """The target cut into `n_bins` equal-width bins, or into fewer when no bin would hold a
    row for every fold (few rows, or a large cv.n_bins): stratifying needs that much."""
    wanted = n_bins
    while True:
        bins = pd.cut(targets, bins=n_bins, labels=False)
        if n_bins == 1 or np.bincount(bins).max() >= n_folds:
            break
        n_bins = max(1, min(n_bins - 1, len(targets) // n_folds))
    if n_bins != wanted:
        log.info("folds: the target is cut into %d bins, not %d: no bin had %d rows to spread over the folds",
                 n_bins, wanted, n_folds)
    return bins


def assign_folds(targets: np.ndarray, n_folds: int, seed: int, n_bins: int | None = None) -> np.ndarray:
    """Return an int array: the validation fold of each row."""
    targets = np.asarray(targets, dtype=float)
    bins = target_bins(targets, n_bins or n_bins_for(len(targets)), n_folds)
    folds = np.full(len(targets), -1, dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Sparse extreme bins (fewer rows than folds) are expected at the tails.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(targets)), bins)):
            folds[val_idx] = fold
    return folds


def folds_to_run(cfg) -> list[int]:
    """The folds a run trains: cv.folds (a subset), else all cv.n_folds of them."""
    return list(cfg.cv.folds) if cfg.cv.get("folds") is not None else list(range(int(cfg.cv.n_folds)))
