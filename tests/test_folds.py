"""Stratified folds on the binned target, fixed by the fold seed alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftsweep.folds import assign_folds, n_bins_for


def test_sturges_bins():
    assert n_bins_for(2834) == 12
    assert n_bins_for(800) == 10


def test_every_row_in_exactly_one_balanced_fold():
    y = np.random.default_rng(0).normal(-1, 1, 1000)
    folds = assign_folds(y, 5, seed=42)
    assert set(folds) == {0, 1, 2, 3, 4}
    assert np.bincount(folds).tolist() == [200] * 5
    bins = pd.cut(y, n_bins_for(len(y)), labels=False)
    table = pd.crosstab(bins, folds).to_numpy()
    # stratified: each bin's rows spread over the folds within one row of even
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()
    fold_means = [y[folds == f].mean() for f in range(5)]
    assert np.ptp(fold_means) < 0.1  # random 200-row folds spread ~0.17


def test_folds_depend_on_fold_seed_only():
    y = np.random.default_rng(1).normal(size=300)
    assert (assign_folds(y, 5, seed=7) == assign_folds(y, 5, seed=7)).all()
    assert (assign_folds(y, 5, seed=7) != assign_folds(y, 5, seed=8)).any()
