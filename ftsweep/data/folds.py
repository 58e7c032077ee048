"""Stratified k-fold on a binned continuous target.

The fold seed is its own knob (cv.fold_seed): changing the training seed must
never move a row to another fold, or seed sweeps would compare different splits.

The assignment is scikit-learn's StratifiedKFold(shuffle=True, random_state=seed), done here in
numpy (tests/test_folds.py compares the two on many inputs): importing scikit-learn cost every
job's process 1.3-1.7 s, and the folds no longer depend on which scikit-learn is installed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

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
    return stratified_folds(bins, n_folds, seed)


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Each row's fold, every label's rows spread over the folds as evenly as they go.

    Labels are numbered by first appearance. Sorted by that number, the rows are dealt to the
    folds in turn (row i to fold i mod k), which fixes how many rows of each label a fold gets
    and keeps the folds' sizes within one row of each other. Then, label by label, a
    RandomState(seed) shuffles which of that label's rows go where. Rare labels (fewer rows than
    folds, at the tails of a binned target) simply miss some folds."""
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {n_folds}")
    if n_folds > len(labels):
        raise ValueError(f"{len(labels)} row(s) cannot be split into {n_folds} folds")
    _, first_seen, inverse = np.unique(labels, return_index=True, return_inverse=True)
    by_appearance = np.argsort(np.argsort(first_seen))[inverse.ravel()]
    n_labels = len(first_seen)
    dealt = np.sort(by_appearance)
    per_fold = np.array([np.bincount(dealt[fold::n_folds], minlength=n_labels) for fold in range(n_folds)])
    rng = np.random.RandomState(seed)
    folds = np.empty(len(labels), dtype=int)
    for label in range(n_labels):
        label_folds = np.repeat(np.arange(n_folds), per_fold[:, label])
        rng.shuffle(label_folds)
        folds[by_appearance == label] = label_folds
    return folds


def folds_to_run(cfg) -> list[int]:
    """The folds a run trains: cv.folds (a subset), else all cv.n_folds of them."""
    return list(cfg.cv.folds) if cfg.cv.get("folds") is not None else list(range(int(cfg.cv.n_folds)))
