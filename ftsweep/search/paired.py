"""The paired pruner (`hydra/sweeper/pruner=paired`): is this trial worse than the best one on the
very rows both have scored?

Folds are fixed by `cv.fold_seed`, and a study holds one dataset and one set of fixed overrides
(ftsweep.search.study.bind), so after fold k a trial and the best complete trial have predicted
the same validation rows. The trial's squared error on each of those rows (folds 0..k pooled) is
paired with the best trial's on the same row; the trial is pruned when a one-sided paired test
of the mean says its RMSE on them exceeds the best's by more than `min_delta`, at level `alpha`
spent over the trial's looks (Bonferroni: alpha/K at each of K; see PairedPruner).

What it assumes: the rows are the same (checked: a digest of the row ids per fold; other rows
never prune), and the best trial's errors are fixed numbers. Training noise (another seed would
give other errors) is not in the test, which is what `min_delta` is for. What it costs: each trial
stores its per-row errors as trial attributes (4 bytes a row, base64), and each fold's decision
reads the complete trials' attributes (a t-test, or a bootstrap of 2,000 resamples: milliseconds).
"""

from __future__ import annotations

import base64
import hashlib
import math
import warnings

import numpy as np
import optuna
import pandas as pd
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from ftsweep.config.rules import SEED_MAX, Range, show, whole
from ftsweep.data.loading import ID, TARGET
from ftsweep.tags import ROW_ERRORS_ATTR

TESTS = ("t", "bootstrap")
MAX_RESAMPLES = 100_000  # a decision's time grows with resamples x rows
_RESAMPLE_BLOCK = 2**22  # indices drawn at once (32 MiB): memory stays flat however many rows


def build_pruner(spec) -> BasePruner:
    """hydra.sweeper.pruner built (Optuna's "experimental" warning for its WilcoxonPruner is noise here)."""
    from hydra.utils import instantiate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return instantiate(spec)


def encode_errors(predictions: pd.DataFrame, column: str = "pred_best") -> dict[str, str]:
    """A fold's squared errors (of the best checkpoint, or `column`'s predictions) in row-id order,
    with a digest of those ids."""
    frame = predictions.assign(**{ID: predictions[ID].astype(str)}).sort_values(ID, kind="stable")
    errors = (frame[column].to_numpy(np.float64) - frame[TARGET].to_numpy(np.float64)) ** 2
    return {"rows": _digest(frame[ID]), "sq_err": base64.b64encode(errors.astype("<f4").tobytes()).decode()}


def _digest(ids: pd.Series) -> str:
    return hashlib.sha1("\x1f".join(ids).encode()).hexdigest()[:16]


def decode_errors(entry: dict) -> tuple[str, np.ndarray]:
    return entry["rows"], np.frombuffer(base64.b64decode(entry["sq_err"]), dtype="<f4").astype(np.float64)


def pooled_errors(trial: FrozenTrial, step: int) -> tuple[list[str], np.ndarray] | None:
    """The trial's errors over fold positions 0..step (the digests say which rows), or None
    when it has not stored them all."""
    digests, parts = [], []
    for position in range(step + 1):
        entry = trial.user_attrs.get(ROW_ERRORS_ATTR.format(step=position))
        if not isinstance(entry, dict):
            return None
        digest, errors = decode_errors(entry)
        digests.append(digest)
        parts.append(errors)
    return digests, np.concatenate(parts)


def p_worse(trial: np.ndarray, best: np.ndarray, min_delta: float, test: str = "t",
            n_resamples: int = 2000, seed: int = 0):
    """One-sided p-value of "on these rows, the trial's RMSE exceeds the best's by more than
    min_delta", from the paired squared errors. The margin is moved into squared-error units:
    RMSE_t > RMSE_b + δ  ⇔  mean(e_t - e_b) > (RMSE_b + δ)² - RMSE_b², so the test is on the
    mean of the shifted differences d = e_t - e_b - that shift (t: Student's t over the rows;
    bootstrap: the share of resampled means <= 0). Rows are the last axis: 2-D errors give one
    p-value per leading row (the calibration benchmark decides many simulated trials at once)."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}: use one of {TESTS}")
    trial, best = np.asarray(trial, dtype=np.float64), np.asarray(best, dtype=np.float64)
    shift = min_delta * (2 * np.sqrt(best.mean(axis=-1, keepdims=True)) + min_delta)  # (r + δ)² - r², 0 for δ = 0
    d = trial - best - shift
    p = _t_test(d) if test == "t" else _bootstrap(d, n_resamples, seed)
    p = np.where(np.any(d > 0, axis=-1), p, 1.0)  # never worse than the margin on any row (identical errors included)
    return float(p) if p.ndim == 0 else p


def _t_test(d: np.ndarray) -> np.ndarray:
    """P(T_{n-1} >= mean/(sd/√n)); constant differences give 0 or 1, a single row 1."""
    from scipy.stats import t as student

    n = d.shape[-1]
    mean, sd = d.mean(axis=-1), d.std(axis=-1, ddof=1) if n > 1 else np.zeros(d.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        p = student.sf(mean / (sd / math.sqrt(n)), max(n - 1, 1))
    return np.where(sd > 0, p, np.where((mean > 0) & (n > 1), 0.0, 1.0))


def _bootstrap(d: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(resampled means <= 0, + 1) / (n_resamples + 1), the resamples drawn in blocks."""
    rng, n = np.random.default_rng(seed), d.shape[-1]
    per_block = max(1, _RESAMPLE_BLOCK // n)
    not_worse = np.zeros(d.shape[:-1], dtype=np.int64)
    for start in range(0, n_resamples, per_block):  # the same draws as one (n_resamples, rows) array
        draws = rng.integers(0, n, size=(min(per_block, n_resamples - start), n))
        not_worse += np.count_nonzero(_resampled_means(d, draws) <= 0.0, axis=-1)
    return (not_worse + 1) / (n_resamples + 1)


def _resampled_means(d: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Each draw's mean of d: gathered for one trial (fast); for many, each draw's row counts
    times d (one matrix product instead of a (trials, draws, rows) array)."""
    if d.ndim == 1:
        return d[draws].mean(axis=1)
    size, n = draws.shape
    counts = np.bincount((draws + n * np.arange(size)[:, None]).ravel(), minlength=size * n).reshape(size, n)
    return np.moveaxis(counts.astype(np.float64) @ np.moveaxis(d, -1, -2), -2, -1) / n


class SettingError(ValueError):
    """A PairedPruner setting that cannot work; the message starts with the key."""


# The settings, checked by the same rules (and words) as the run config's numeric keys.
_SETTINGS = {
    "alpha": Range(low=0.0, high=0.5, low_open=True, high_open=True),
    "min_delta": Range(low=0.0),  # RMSE units
    "n_warmup_steps": Range(integer=True, low=0, high=10**6),
    "n_resamples": Range(integer=True, low=100, high=MAX_RESAMPLES),
    "seed": Range(integer=True, low=0, high=SEED_MAX),
}
_WHY = {"alpha": " (one-sided: at 0.5 or above a trial whose estimate beats the best is stopped)"}
_REMOVED = {"wilcoxon": "signed ranks test the typical row, not the mean that RMSE is, and stop better trials "
                        "whose error is spread over many rows"}


def _setting(key: str, value):
    rule = _SETTINGS[key]
    taken = whole(value) if rule.integer else value  # 2e3 is Hydra's float, taken as hydra.sweeper.n_trials=1e3 is
    if not rule.admits(taken):
        raise SettingError(f"{key}={show(value)} must be {rule.describe()}{_WHY.get(key, '')}")
    return taken


class PairedPruner(BasePruner):
    """Prune a trial whose RMSE on the validation rows scored so far exceeds the best complete
    trial's on the same rows by more than ``min_delta``, by a one-sided paired test of the mean.

    After fold position ``step`` the trial's squared errors on the rows of folds ``0..step`` are
    paired with the best complete trial's; the test is on the mean of the differences shifted by
    the margin, ``d = e_t - e_b - δ(2·RMSE_b + δ)``. A trial of ``k`` folds makes at most
    ``K = k - 1 - n_warmup_steps`` decisions (after folds ``n_warmup_steps..k-2``; a decision
    after the last fold would save nothing), and each is taken at level ``alpha / K``
    (Bonferroni), so a trial exactly at the margin is stopped at any look with probability at
    most ``alpha``, whatever the reference does between looks. ``k`` is read from the best
    complete trial (it stored one entry per fold; a study's trials run the same folds).

    Args:
        alpha: The chance, over all of a trial's looks, of stopping a trial whose RMSE is exactly
            ``min_delta`` above the best's; in (0, 0.5).
        min_delta: The margin, in RMSE units: a smaller gap never stops a trial.
        test: ``"t"`` (Student's t on the shifted differences; the default, measured in
            ``benchmarks/pruner_calibration.py``) or ``"bootstrap"`` (percentile bootstrap of
            their mean, ``n_resamples`` seeded resamples; rejects too often on few rows).
        n_warmup_steps: Fold positions before the first decision (0: decide after fold 0).
        n_resamples: Resamples of the bootstrap.
        seed: The bootstrap's seed (the same decision for the same errors).

    Example:

        .. testcode::

            import numpy as np
            import optuna
            import pandas as pd

            from ftsweep.search.paired import PairedPruner, encode_errors
            from ftsweep.tags import ROW_ERRORS_ATTR

            def fold(errors):  # a fold's predictions: targets 0, so each squared error is pred²
                ids = [f"r{i:03d}" for i in range(len(errors))]
                return encode_errors(pd.DataFrame({"id": ids, "target": 0.0, "pred_best": np.sqrt(errors)}))

            rng = np.random.default_rng(0)
            best = [rng.chisquare(1, 100) * 0.25 for _ in range(5)]  # RMSE about 0.5
            study = optuna.create_study(pruner=PairedPruner(alpha=0.05, min_delta=0.01))
            done = study.ask()
            for step, errors in enumerate(best):
                done.set_user_attr(ROW_ERRORS_ATTR.format(step=step), fold(errors))
                done.report(float(np.sqrt(errors.mean())), step)
            study.tell(done, float(np.sqrt(np.concatenate(best).mean())))

            worse = study.ask()  # every row 0.2 further off: stopped after fold 0
            worse.set_user_attr(ROW_ERRORS_ATTR.format(step=0), fold((np.sqrt(best[0]) + 0.2) ** 2))
            worse.report(0.7, 0)
            assert worse.should_prune()

    .. note::
        The best trial's errors are taken as fixed numbers: the test's noise is the rows', not
        training's (another seed of the best config would give other errors), and the best is
        the luckiest of the trials run so far. Training noise lives in ``min_delta``; set it
        from the seed-to-seed spread of your results (``benchmarks/RESULTS.md`` measures how
        often a trial at the margin is stopped when the best is chosen among 10).
    """

    needs_row_errors = True  # the job stores each fold's errors on its trial (ftsweep.search.pruning)

    def __init__(self, alpha: float = 0.05, min_delta: float = 0.01, test: str = "t",
                 n_warmup_steps: int = 0, n_resamples: int = 2000, seed: int = 0):
        self.alpha, self.min_delta = float(_setting("alpha", alpha)), float(_setting("min_delta", min_delta))
        if test in _REMOVED:
            raise SettingError(f"test={show(test)} is no longer offered ({_REMOVED[test]}): use test=t")
        if test not in TESTS:
            raise SettingError(f"test={show(test)}: use one of {', '.join(TESTS)}")
        self.test = test
        self.n_warmup_steps, self.n_resamples, self.seed = (_setting(key, value) for key, value in (
            ("n_warmup_steps", n_warmup_steps), ("n_resamples", n_resamples), ("seed", seed)))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        mine = pooled_errors(trial, step)
        reference = best_reference(study, step)
        if mine is None or reference is None or reference[0] != mine[0]:
            return False  # no complete trial with errors yet, or other rows: no pairing, no pruning
        return bool(self.stops(mine[1], reference[1], step, reference[2]))

    def stops(self, trial_errors: np.ndarray, best_errors: np.ndarray, step: int, n_folds: int):
        """The decision after fold position `step` of `n_folds`, from the pooled errors: p_worse below
        alpha / K, K the looks a trial makes. Rows on the last axis (2-D: one decision per leading row)."""
        looks = n_folds - 1 - self.n_warmup_steps
        if step < self.n_warmup_steps or step >= n_folds - 1:  # warming up, or the last fold: nothing to save
            return np.zeros(np.shape(trial_errors)[:-1], dtype=bool)
        return p_worse(trial_errors, best_errors, self.min_delta, self.test, self.n_resamples, self.seed) \
            < self.alpha / looks


def stored_folds(trial: FrozenTrial) -> int:
    """The fold positions 0, 1, ... whose errors the trial stored."""
    count = 0
    while isinstance(trial.user_attrs.get(ROW_ERRORS_ATTR.format(step=count)), dict):
        count += 1
    return count


def best_reference(study: optuna.Study, step: int) -> tuple[list[str], np.ndarray, int] | None:
    """The best complete trial's pooled errors over fold positions 0..step and its number of folds
    (complete trials that stored none, e.g. run under another pruner, are passed over)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: t.value):
        errors = pooled_errors(trial, step)
        if errors is not None:
            return (*errors, stored_folds(trial))
    return None
