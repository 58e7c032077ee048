"""The results table's arithmetic: seed pooling, fold-paired deltas and their 95% intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ftsweep.sweep.table import build_table, paired_difference, to_markdown


def _folds():
    rows = []
    rng = np.random.default_rng(0)
    for key, label, shift, ref, job in [("a", "Basic fine-tuning", 0.0, 0.589, 0), ("b", "LLRD", -0.05, 0.575, 1)]:
        for seed in (0, 1):
            for fold in range(3):
                best = 0.6 + shift + 0.01 * fold + 0.002 * seed + rng.normal(0, 0.001)
                rows.append({"row_key": key, "label": label, "seed": seed, "fold": fold, "rmse_best": best,
                             "rmse_last": best + 0.01, "swa": key == "b", "start_time": 10 - job, "job_num": job,
                             "reference": ref})
    return pd.DataFrame(rows)


def test_paired_difference_is_a_t_interval_over_seed_fold_pairs():
    folds = _folds()
    a, b = folds[folds.row_key == "a"], folds[folds.row_key == "b"]
    diff = paired_difference(b, a)
    d = b.set_index(["seed", "fold"])["rmse_best"] - a.set_index(["seed", "fold"])["rmse_best"]
    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert diff.n == 6 and diff.mean == pytest.approx(d.mean())
    assert (diff.low, diff.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert diff.high < 0  # a real improvement: the interval excludes 0


def test_table_pools_seeds_and_orders_like_the_reference():
    folds = _folds()
    table = build_table(folds)
    assert table["label"].tolist() == ["Basic fine-tuning", "LLRD"]  # decreasing reference RMSE
    a = folds[folds.row_key == "a"]
    per_seed = a.groupby("seed")["rmse_best"].mean()
    assert table.loc[0, "rmse_best"] == pytest.approx(per_seed.mean())
    assert table.loc[0, "seed_sd"] == pytest.approx(per_seed.std(ddof=1))
    assert table.loc[0, "rmse_best_sd"] == pytest.approx(a.groupby("seed")["rmse_best"].std(ddof=0).mean())
    assert table.loc[0, "baseline"] and not table.loc[1, "baseline"]
    assert table.loc[1, "delta"] == pytest.approx(-0.05, abs=0.002)
    md = to_markdown(table)
    assert "| LLRD | 2×3 |" in md and "(SWA)" in md and "0.5750" in md and "within noise" not in md


def test_a_difference_inside_the_noise_says_so():
    folds = _folds()
    b = folds.row_key == "b"
    folds.loc[b, "rmse_best"] = folds.loc[~b, "rmse_best"].to_numpy() + np.array([0.02, -0.02, 0.01, -0.01, 0.0, 0.003])
    assert "(within noise)" in to_markdown(build_table(folds))


def test_baseline_can_be_named():
    table = build_table(_folds(), baseline="LLRD")
    assert table.loc[table.label == "LLRD", "baseline"].item()
    assert table.loc[table.label == "Basic fine-tuning", "delta"].item() == pytest.approx(0.05, abs=0.002)


def test_rows_on_different_data_are_told_apart():
    folds = _folds().assign(data="same")
    assert set(build_table(folds)["label"]) == {"Basic fine-tuning", "LLRD"}
    older = folds[folds.row_key == "a"].assign(row_key="a-old", data="0123456789old")
    table = build_table(pd.concat([folds.assign(data="abcdef0123new"), older]))
    assert {"Basic fine-tuning [data abcdef01]", "Basic fine-tuning [data 01234567]", "LLRD [data abcdef01]"} == set(
        table["label"])
    # each data set has its own baseline: no Δ pairs folds of different data
    assert table["baseline"].sum() == 2
    llrd = table[table["label"] == "LLRD [data abcdef01]"].iloc[0]
    assert llrd["delta"] == pytest.approx(build_table(folds)["delta"].iloc[1])
