"""Stratified folds on the binned target, fixed by the fold seed alone."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from ftsweep.data.folds import assign_folds, n_bins_for, stratified_folds, target_bins


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


def test_too_few_rows_per_bin_fall_back_to_fewer_bins():
    # each case used to end in scikit-learn's "n_splits=... cannot be greater than the number of members"
    for targets, n_folds, n_bins in (([0.0, 1.0], 2, None), ([0.1, 0.5, -1.0, 2.0, 0.0], 5, None),
                                     (np.linspace(-2, 1, 64), 2, 1000)):
        folds = assign_folds(np.asarray(targets), n_folds, seed=1, n_bins=n_bins)
        assert sorted(set(folds)) == list(range(n_folds))
        assert np.bincount(folds).min() >= len(targets) // n_folds


def test_fallback_keeps_stratifying_where_it_can():
    y = np.concatenate([np.zeros(50), np.ones(50)])
    bins = target_bins(y, 1000, 5)
    assert 1 < len(set(bins)) and np.bincount(bins)[np.bincount(bins) > 0].min() >= 5


def _sklearn_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    folds = np.full(len(labels), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a label with fewer rows than folds
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
        for fold, (_, val) in enumerate(splits):
            folds[val] = fold
    return folds


def test_the_folds_are_scikit_learns_stratified_k_fold():
    """ftsweep deals the folds itself (no scikit-learn import in a job); row for row they are
    StratifiedKFold(shuffle=True)'s, on 400 random cases: sizes, fold counts and seeds at the
    ends of their ranges, labels unsorted, with gaps, rare (fewer rows than folds) or single."""
    rng = np.random.default_rng(2026)
    cases = [(np.zeros(7, dtype=int), 7, 0), (np.array([5, 3, 5, 3, 9, 9]), 2, 4294967295)]
    for _ in range(400):
        n_rows, n_folds = int(rng.integers(2, 3000)), int(rng.integers(2, 11))
        n_folds = min(n_folds, n_rows)
        shape = rng.integers(3)
        if shape == 0:  # a binned continuous target, as assign_folds makes
            labels = pd.cut(rng.normal(size=n_rows), n_bins_for(n_rows), labels=False)
        elif shape == 1:  # few labels with gaps, in random order
            labels = rng.choice([-3, 0, 7, 100], size=n_rows, p=[0.01, 0.5, 0.09, 0.4])
        else:  # many rare labels
            labels = rng.integers(0, max(2, n_rows // 2), size=n_rows)
        cases.append((labels, n_folds, int(rng.integers(0, 2**32))))
    checked = 0
    for labels, n_folds, seed in cases:
        if np.bincount(np.unique(labels, return_inverse=True)[1].ravel()).max() < n_folds:
            continue  # scikit-learn refuses these; target_bins never hands them over
        np.testing.assert_array_equal(stratified_folds(labels, n_folds, seed), _sklearn_folds(labels, n_folds, seed))
        checked += 1
    assert checked > 300


@pytest.mark.parametrize(("n_rows", "n_folds", "said"), [
    (3, 5, "3 row(s) cannot be split into 5 folds"), (0, 2, "0 row(s) cannot be split into 2 folds"),
    (4, 1, "cross-validation needs at least 2 folds, not 1")])
def test_fewer_rows_than_folds_or_one_fold_is_refused(n_rows, n_folds, said):
    with pytest.raises(ValueError) as err:
        stratified_folds(np.zeros(n_rows, dtype=int), n_folds, 0)
    assert str(err.value) == said
