"""The results table's arithmetic: seed pooling, fold-level deltas, their corrected 95% intervals and
the Bayesian correlated t-test's probabilities. Expected values come from a worked example with
literal numbers, scipy.stats and baycomp, never from the table's own formula."""

from __future__ import annotations

import math

import baycomp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ftsweep.cv.pipeline import run_cv
from ftsweep.sweep.table import build_table, fold_frame, paired_difference, to_markdown
from ftsweep.tracking.store import Tracker


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


# The worked example: 2 configs x 2 seeds x 3 folds (cv.n_folds=3), RMSE of the best checkpoint.
BASE = {0: [0.500, 0.520, 0.480], 1: [0.510, 0.530, 0.490]}  # seed -> folds 0, 1, 2
LLRD = {0: [0.490, 0.500, 0.475], 1: [0.500, 0.515, 0.480]}


def _grid(base=BASE, other=LLRD, rows=None, n_folds=3):
    """A fold frame as fold_frame builds it; `rows`: per config key, the fold row digests."""
    records = []
    for key, label, values, job in [("a", "Basic fine-tuning", base, 0), ("b", "LLRD", other, 1)]:
        for seed, per_fold in values.items():
            for fold, rmse in enumerate(per_fold):
                records.append({"row_key": key, "label": label, "seed": seed, "fold": fold, "rmse_best": rmse,
                                "rmse_last": rmse, "swa": False, "start_time": job, "job_num": job,
                                "reference": math.nan, "n_folds": n_folds,
                                "rows": (rows or {}).get(key, [f"fold{f}" for f in range(n_folds)])[fold]})
    return pd.DataFrame(records)


def test_worked_example_interval_is_over_folds_with_the_corrected_variance():
    table = build_table(_grid())
    llrd = table.set_index("label").loc["LLRD"]
    # by hand: seeds averaged per fold: base 0.505, 0.525, 0.485; LLRD 0.495, 0.5075, 0.4775
    d = np.array([-0.010, -0.0175, -0.0075])
    var = ((-0.010 + 0.035 / 3) ** 2 + (-0.0175 + 0.035 / 3) ** 2 + (-0.0075 + 0.035 / 3) ** 2) / 2  # 2.7083e-5
    scale = math.sqrt(var * (1 / 3 + 1 / 2))  # Nadeau-Bengio: 1/k + n_val/n_train, 1/(3-1) for 3 folds
    half = stats.t.ppf(0.975, 2) * scale  # k - 1 = 2 degrees of freedom
    assert llrd["pairs"] == 3 and llrd["delta"] == pytest.approx(-0.035 / 3)
    assert (llrd["delta_low"], llrd["delta_high"]) == pytest.approx((-0.035 / 3 - half, -0.035 / 3 + half))
    # the same through scipy's own fold-level t-interval, widened by sqrt(1 + k * n_val/n_train)
    plain = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert llrd["delta_high"] - llrd["delta_low"] == pytest.approx((plain.high - plain.low) * math.sqrt(1 + 3 / 2))
    assert "| -0.0117 [-0.0321, +0.0088] (not detected) | 0.85 / 0.11 / 0.04 |" in to_markdown(table)


def test_probabilities_are_baycomps_correlated_t_test_with_lower_rmse_better():
    grid = _grid()
    means = {key: grid[grid.row_key == key].groupby("fold")["rmse_best"].mean().to_numpy() for key in "ab"}
    for rope in (0.005, 0.01, 0.0):
        llrd = build_table(grid, rope=rope).set_index("label").loc["LLRD"]
        # baycomp: diff = y - x = LLRD - baseline, p_left = P(diff < -rope): LLRD better
        expected = baycomp.two_on_single(means["a"], means["b"], rope=rope)
        if rope == 0:
            expected = (expected[0], 0.0, expected[1])
        assert (llrd["p_better"], llrd["p_equivalent"], llrd["p_worse"]) == pytest.approx(expected, abs=1e-9)
    assert build_table(grid).set_index("label").loc["LLRD", "p_better"] == pytest.approx(0.8521803625)


def test_the_old_interval_over_seed_fold_pairs_was_narrower():
    """3 seeds x 5 folds: (seed, fold) pairs claim 14 dof where the folds hold 4."""
    rng = np.random.default_rng(7)
    fold_effect = rng.normal(0, 0.02, 5)  # a fold's rows make both configs better or worse together
    base = {s: list(0.5 + fold_effect + rng.normal(0, 0.004, 5)) for s in range(3)}
    other = {s: list(0.495 + fold_effect + rng.normal(0, 0.004, 5) + [0.01, -0.01, 0.0, 0.005, -0.006])
             for s in range(3)}
    llrd = build_table(_grid(base, other, n_folds=5)).set_index("label").loc["LLRD"]
    pairs = np.array([other[s][f] - base[s][f] for s in range(3) for f in range(5)])
    old_half = stats.t.ppf(0.975, 14) * pairs.std(ddof=1) / math.sqrt(15)
    folds = pairs.reshape(3, 5).mean(axis=0)
    new_half = stats.t.ppf(0.975, 4) * math.sqrt(folds.var(ddof=1) * (1 / 5 + 1 / 4))
    printed_half = (llrd["delta_high"] - llrd["delta_low"]) / 2
    assert printed_half > 1.5 * old_half  # the old table printed old_half
    assert printed_half == pytest.approx(new_half) and llrd["pairs"] == 5
    assert abs(pairs.mean()) > old_half and abs(llrd["delta"]) < printed_half  # "detected" only by the old one


def test_folds_that_hold_other_rows_get_no_delta():
    other_seed = {"a": ["r0", "r1", "r2"], "b": ["s0", "s1", "s2"]}  # cv.fold_seed changed: same data, other folds
    table = build_table(_grid(rows=other_seed))
    llrd = table.set_index("label").loc["LLRD"]
    assert math.isnan(llrd["delta"]) and llrd["pairs"] == 0 and llrd["delta_note"] == "other folds: no Δ"
    assert "| other folds: no Δ | – |" in to_markdown(table)
    unrecorded = {"a": ["r0", "r1", "r2"], "b": ["cv:3/42/None"] * 3}  # runs from before ftsweep.fold_rows
    llrd = build_table(_grid(rows=unrecorded)).set_index("label").loc["LLRD"]
    assert math.isnan(llrd["delta"]) and llrd["delta_note"] == "fold rows not recorded: no Δ"


def test_fold_runs_record_their_rows_and_other_fold_seeds_get_no_delta(make_cfg):
    """Through run_cv and the MLflow store: cv.fold_seed moves the folds of the same data."""
    for seed in (42, 7):
        run_cv(make_cfg("tracking.experiment=rows", f"cv.fold_seed={seed}", f"label=folds{seed}"))
    cfg = make_cfg("tracking.experiment=rows")
    folds = fold_frame(Tracker(cfg.tracking.uri, "rows"))
    assert folds.groupby("fold")["rows"].nunique().tolist() == [2, 2]  # each fold: one digest per fold seed
    assert (folds["n_val"] + folds["n_train"]).tolist() == [64.0] * 4 and set(folds["n_folds"]) == {2.0}
    table = build_table(folds, baseline="folds42").set_index("label")
    assert table.loc["folds7", "delta_note"] == "other folds: no Δ" and math.isnan(table.loc["folds7", "delta"])


def test_paired_difference_uses_recorded_fold_sizes():
    grid = _grid().assign(n_val=20.0, n_train=80.0)  # 100 rows, 20 per validation fold: ratio 0.25, not 1/(3-1)
    a, b = grid[grid.row_key == "a"], grid[grid.row_key == "b"]
    diff = paired_difference(b, a)
    d = np.array([-0.010, -0.0175, -0.0075])
    half = stats.t.ppf(0.975, 2) * math.sqrt(d.var(ddof=1) * (1 / 3 + 20 / 80))
    assert diff.ratio_recorded and diff.ratio == 0.25
    assert (diff.low, diff.high) == pytest.approx((d.mean() - half, d.mean() + half))


def test_table_pools_seeds_and_orders_like_the_reference():
    folds = _folds()
    table = build_table(folds)
    assert table["label"].tolist() == ["Basic fine-tuning", "LLRD"]  # decreasing reference RMSE
    a = build_table(_grid()).iloc[0]
    # base: seed 0 folds 0.50, 0.52, 0.48 (sample sd 0.02), seed 1 0.51, 0.53, 0.49 (0.02); CV means 0.50, 0.51
    assert a["rmse_best_sd"] == pytest.approx(0.02) and a["seed_sd"] == pytest.approx(0.01 / math.sqrt(2))
    assert a["rmse_best"] == pytest.approx(0.505)
    assert table.loc[0, "baseline"] and not table.loc[1, "baseline"]
    assert table.loc[1, "delta"] == pytest.approx(-0.05, abs=0.002)
    md = to_markdown(table)
    assert "| LLRD | 2×3 |" in md and "(SWA)" in md and "0.5750" in md and "not detected" not in md


def test_a_difference_inside_the_noise_says_not_detected():
    folds = _folds()
    b = folds.row_key == "b"
    folds.loc[b, "rmse_best"] = folds.loc[~b, "rmse_best"].to_numpy() + np.array([0.02, -0.02, 0.01, -0.01, 0.0, 0.003])
    md = to_markdown(build_table(folds))
    assert "(not detected)" in md and "within noise" not in md


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


@pytest.mark.parametrize("rope", ["-0.01", "nan", "inf", "abc"])
def test_a_rope_that_cannot_be_a_width_is_one_line_exit_2(rope, tmp_path, capsys):
    from ftsweep.table import main

    with pytest.raises(SystemExit) as stopped:
        main(["--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path}/none.db", f"--rope={rope}"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"ftsweep.table: error: --rope={rope} must be a number >= 0 in RMSE units "
                                       f"(a smaller |Δ| counts as no practical difference), e.g. --rope=0.005.\n")
