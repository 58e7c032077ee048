"""The results table's statistics: one config against the baseline, fold by fold.

The unit of replication is the fold (its validation rows), not the run: each config's seeds
are averaged within a fold first, so k folds give k differences d_1..d_k (row - baseline, in
RMSE; negative is better) and k-1 degrees of freedom, however many seeds ran.

- Interval: the corrected resampled t (Nadeau & Bengio 2003). Folds share most of their
  training rows, so their differences are positively correlated and the plain t-interval
  (variance / k) is too narrow; the correction widens the variance to
  s^2 * (1/k + n_val/n_train), with s^2 the sample variance of the d_i and n_val/n_train the
  ratio of a fold's validation to training rows (1/(K-1) for K-fold CV). It assumes the
  d_i are roughly normal and that this heuristic factor covers their correlation; it is
  still an approximation, and with few folds the interval is wide by design.
- Probabilities: the Bayesian correlated t-test (Benavoli et al., JMLR 2017; baycomp's
  CorrelatedTTest): the mean difference has a Student t posterior with k-1 degrees of
  freedom, location mean(d) and the same corrected scale. P(better) = P(Δ < -rope),
  P(equivalent) = P(|Δ| <= rope), P(worse) = P(Δ > rope); the rope is the region of
  practical equivalence, a difference too small to matter (table.rope, RMSE units).
- Only the same rows are compared: a Δ needs every paired fold to hold the same validation
  row ids on both sides (the fold runs' ftsweep.fold_rows digests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from ftsweep.errors import FtsweepError

LEVEL = 0.95
# A change under 0.005 RMSE (1% of the 0.46-0.59 RMSE these tasks reach) is below the standard
# error of one RMSE measured on ~2,800 rows (about sigma / sqrt(2n) = 0.0066 at sigma = 0.5).
DEFAULT_ROPE = 0.005
# Fold runs from before ftsweep.fold_rows: their folds are named by the parent's cv settings
# (same data, n_folds, fold_seed and n_bins give the same folds), never equal to a digest.
UNRECORDED = "cv:"


@dataclass
class Paired:
    mean: float
    low: float
    high: float
    n: int  # paired folds (seeds averaged within each)
    p_better: float = math.nan
    p_equivalent: float = math.nan
    p_worse: float = math.nan
    ratio: float = math.nan  # n_val / n_train used in the correction
    ratio_recorded: bool = False  # from the runs' fold sizes; False: derived as 1/(K-1) from cv.n_folds
    note: str = ""  # why there is no Δ


def check_rope(rope, where: str = "table.rope") -> float:
    """The ROPE as a float (a number, or its text from the command line), else one line naming `where`."""
    try:
        value = float(rope) if isinstance(rope, str | int | float) and not isinstance(rope, bool) else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise FtsweepError(f"{where}={rope} must be a number >= 0 in RMSE units (a smaller |Δ| counts as no "
                           f"practical difference), e.g. {where}={DEFAULT_ROPE}.")
    return value


def fold_means(frame: pd.DataFrame, column: str) -> pd.Series:
    """One value per fold: the seeds' mean (seeds of a fold share its validation rows)."""
    return frame.groupby("fold")[column].mean()


def paired_difference(row: pd.DataFrame, base: pd.DataFrame, column: str = "rmse_best",
                      rope: float = DEFAULT_ROPE) -> Paired:
    """Row - baseline over the folds both ran, with the corrected 95% interval and P(better/≈/worse)."""
    diffs = (fold_means(row, column) - fold_means(base, column)).dropna()
    if len(diffs) == 0:
        return Paired(math.nan, math.nan, math.nan, 0, note="no paired folds")
    note = _other_rows(row, base, diffs.index)
    if note:
        return Paired(math.nan, math.nan, math.nan, 0, note=note)
    mean, k = float(diffs.mean()), len(diffs)
    if k < 2:
        return Paired(mean, math.nan, math.nan, 1)
    ratio, recorded = _val_train_ratio(row[row["fold"].isin(diffs.index)])
    scale = math.sqrt(float(diffs.var(ddof=1)) * (1 / k + ratio))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, k - 1)) * scale
    better, equivalent, worse = rope_probabilities(mean, scale, k - 1, rope)
    return Paired(mean, mean - half, mean + half, k, better, equivalent, worse, ratio, recorded)


def rope_probabilities(mean: float, scale: float, df: int, rope: float) -> tuple[float, float, float]:
    """P(Δ < -rope), P(|Δ| <= rope), P(Δ > rope) under the t posterior (lower RMSE is better)."""
    if scale == 0:  # every fold moved by the same amount: the posterior is a point
        better, worse = float(mean < -rope), float(mean > rope)
    else:
        better = float(stats.t.cdf(-rope, df, mean, scale))
        worse = float(stats.t.sf(rope, df, mean, scale))
    return better, 1.0 - better - worse, worse


def _other_rows(row: pd.DataFrame, base: pd.DataFrame, folds: pd.Index) -> str:
    """Why the two sides' paired folds may hold other rows; "" when they hold the same."""
    if "rows" not in row or "rows" not in base:
        return ""  # a frame built without digests (the benchmarks' replays): folds are taken as given
    mine, theirs = _digests(row, folds), _digests(base, folds)
    if mine == theirs:
        return ""
    recorded = [not any(d.startswith(UNRECORDED) for d in side) for side in (mine, theirs)]
    return "fold rows not recorded: no Δ" if recorded[0] != recorded[1] else "other folds: no Δ"


def _digests(side: pd.DataFrame, folds: pd.Index) -> list[str]:
    """Per paired fold, its rows' digest (seeds that disagree are all kept, so they differ)."""
    by_fold = side[side["fold"].isin(folds)].groupby("fold")["rows"].agg(lambda s: "|".join(sorted(set(s))))
    return [by_fold[f] for f in folds]


def _val_train_ratio(side: pd.DataFrame) -> tuple[float, bool]:
    """n_val / n_train of the paired folds: from the sizes the runs recorded, else 1/(K-1)."""
    if {"n_val", "n_train"} <= set(side) and side["n_val"].notna().all():
        return float((side["n_val"] / side["n_train"]).mean()), True
    if "n_folds" in side and side["n_folds"].notna().all():
        n_folds = int(side["n_folds"].iloc[0])
    else:  # a frame without run records: the folds seen (at least 2 here: k >= 2 were paired)
        n_folds = int(side["fold"].max()) + 1
    return 1 / (n_folds - 1), False
