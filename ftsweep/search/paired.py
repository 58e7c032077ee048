"""The paired pruner (`hydra/sweeper/pruner=paired`): is this trial worse than the best one on the
very rows both have scored?

Folds are fixed by `cv.fold_seed`, and a study holds one dataset and one set of fixed overrides
(ftsweep.search.study.bind), so after fold k a trial and the best complete trial have predicted
the same validation rows. The trial's squared error on each of those rows (folds 0..k pooled) is
paired with the best trial's on the same row; the trial is pruned when a one-sided paired test
says its RMSE on them exceeds the best's by more than `min_delta`, at level `alpha`.

What it assumes: the rows are the same (checked: a digest of the row ids per fold; other rows
never prune), and the best trial's errors are fixed numbers. Training noise (another seed would
give other errors) is not in the test, which is what `min_delta` is for. What it costs: each trial
stores its per-row errors as trial attributes (4 bytes a row, base64), and each fold's decision
reads the complete trials' attributes (a bootstrap of 2,000 resamples: milliseconds).
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

from ftsweep.config.rules import SEED_MAX, Range, show
from ftsweep.data.loading import ID, TARGET
from ftsweep.tags import ROW_ERRORS_ATTR

TESTS = ("bootstrap", "wilcoxon")
MAX_RESAMPLES = 100_000  # a decision's time grows with resamples x rows
_RESAMPLE_BLOCK = 2**22  # indices drawn at once (32 MiB): memory stays flat however many rows


def build_pruner(spec) -> BasePruner:
    """hydra.sweeper.pruner built (Optuna's "experimental" warning for its WilcoxonPruner is noise here)."""
    from hydra.utils import instantiate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return instantiate(spec)


def encode_errors(predictions: pd.DataFrame) -> dict[str, str]:
    """A fold's squared errors (best checkpoint) in row-id order, with a digest of those ids."""
    frame = predictions.assign(**{ID: predictions[ID].astype(str)}).sort_values(ID, kind="stable")
    errors = (frame["pred_best"].to_numpy(np.float64) - frame[TARGET].to_numpy(np.float64)) ** 2
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


def p_worse(trial: np.ndarray, best: np.ndarray, min_delta: float, test: str = "bootstrap",
            n_resamples: int = 2000, seed: int = 0) -> float:
    """One-sided p-value of "on these rows, the trial's RMSE exceeds the best's by more than
    min_delta", from the paired squared errors. The margin is moved into squared-error units:
    RMSE_t > RMSE_b + δ  ⇔  mean(e_t - e_b) > (RMSE_b + δ)² - RMSE_b², so the test is on the
    shifted differences d = e_t - e_b - that shift (bootstrap: of their mean; wilcoxon: of
    their location, signed ranks)."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}: use one of {TESTS}")
    shift = min_delta * (2 * math.sqrt(float(np.mean(best))) + min_delta)  # (r + δ)² - r², exactly 0 for δ = 0
    d = np.asarray(trial, dtype=np.float64) - np.asarray(best, dtype=np.float64) - shift
    if not np.any(d > 0):  # never worse than the margin on any row (identical errors included)
        return 1.0
    if test == "wilcoxon":
        from scipy.stats import wilcoxon

        return float(wilcoxon(d, alternative="greater", zero_method="zsplit").pvalue)
    rng = np.random.default_rng(seed)
    per_block = max(1, _RESAMPLE_BLOCK // len(d))
    not_worse = 0
    for start in range(0, n_resamples, per_block):  # the same draws as one (n_resamples, rows) array
        size = min(per_block, n_resamples - start)
        not_worse += int(np.count_nonzero(d[rng.integers(0, len(d), size=(size, len(d)))].mean(axis=1) <= 0.0))
    return float((not_worse + 1) / (n_resamples + 1))


class SettingError(ValueError):
    """A PairedPruner setting that cannot work; the message starts with the key."""


# The settings, checked by the same rules (and words) as the run config's numeric keys.
_SETTINGS = {
    "alpha": Range(low=0.0, high=1.0, low_open=True, high_open=True),
    "min_delta": Range(low=0.0),  # RMSE units
    "n_warmup_steps": Range(integer=True, low=0, high=10**6),
    "n_resamples": Range(integer=True, low=100, high=MAX_RESAMPLES),
    "seed": Range(integer=True, low=0, high=SEED_MAX),
}


def _setting(key: str, value):
    rule = _SETTINGS[key]
    if not rule.admits(value):
        raise SettingError(f"{key}={show(value)} must be {rule.describe()}")
    return value


class PairedPruner(BasePruner):
    """Prune when the trial is worse than the best complete trial on the same validation rows,
    by more than `min_delta` (RMSE units) at level `alpha` (one-sided paired test over rows)."""

    needs_row_errors = True  # the job stores each fold's errors on its trial (ftsweep.search.pruning)

    def __init__(self, alpha: float = 0.05, min_delta: float = 0.01, test: str = "bootstrap",
                 n_warmup_steps: int = 0, n_resamples: int = 2000, seed: int = 0):
        self.alpha, self.min_delta = float(_setting("alpha", alpha)), float(_setting("min_delta", min_delta))
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
        return p_worse(mine[1], reference[1], self.min_delta, self.test, self.n_resamples, self.seed) < self.alpha


def best_reference(study: optuna.Study, step: int) -> tuple[list[str], np.ndarray] | None:
    """The best complete trial's pooled errors over fold positions 0..step (complete trials
    that stored none, e.g. run under another pruner, are passed over)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: t.value):
        errors = pooled_errors(trial, step)
        if errors is not None:
            return errors
    return None
