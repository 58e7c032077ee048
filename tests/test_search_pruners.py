"""The paired pruner's decision on fabricated per-row errors (no training): it prunes a trial
whose rows are clearly worse after fold 0, never one identical to the best, never below
min_delta, and never across other rows."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from ftsweep.errors import FtsweepError
from ftsweep.search.paired import PairedPruner, encode_errors, p_worse, pooled_errors
from ftsweep.search.settings import check_pruner

from helpers import predictions, pruned_after, study_with_best

ROWS = 80


def fold_errors(seed: int, n_folds: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.chisquare(1, ROWS) * 0.25 for _ in range(n_folds)]  # rmse around 0.5, skewed like squared errors


@pytest.mark.parametrize("test", ["t", "bootstrap"])
def test_a_trial_clearly_worse_on_the_rows_is_pruned_after_fold_0(test):
    best = fold_errors(0)
    study = study_with_best(PairedPruner(test=test), best)
    worse = [predictions((np.sqrt(e) + 0.3) ** 2) for e in best]  # every row 0.3 further off
    assert pruned_after(study, worse) == 0


@pytest.mark.parametrize("test", ["t", "bootstrap"])
@pytest.mark.parametrize("min_delta", [0.0, 0.01])
def test_a_trial_identical_to_the_best_is_never_pruned(test, min_delta):
    best = fold_errors(1)
    study = study_with_best(PairedPruner(test=test, min_delta=min_delta), best)
    assert pruned_after(study, [predictions(e) for e in best]) is None
    assert p_worse(np.concatenate(best), np.concatenate(best), min_delta, test) == 1.0


def test_a_gap_below_min_delta_does_not_prune_however_consistent():
    """Every row a little worse (RMSE +0.004): significant on 240 rows, but under min_delta=0.01."""
    best = fold_errors(2)
    slightly = [predictions((np.sqrt(e) + 0.004) ** 2) for e in best]
    assert pruned_after(study_with_best(PairedPruner(min_delta=0.01), best), slightly) is None
    assert pruned_after(study_with_best(PairedPruner(min_delta=0.0), best), slightly) == 0


def test_noise_around_the_best_is_not_pruned_but_a_real_gap_is():
    """Rows that differ by noise (half better, half worse) are not worse; a 0.1 gap under the same noise is."""
    best = fold_errors(3)
    rng = np.random.default_rng(4)
    noisy = [predictions(np.maximum(0, np.sqrt(e) + rng.normal(0, 0.05, ROWS)) ** 2) for e in best]
    gap = [predictions((np.sqrt(e) + 0.1 + rng.normal(0, 0.05, ROWS)) ** 2) for e in best]
    assert pruned_after(study_with_best(PairedPruner(), best), noisy) is None
    assert pruned_after(study_with_best(PairedPruner(), best), gap) == 0


def test_other_rows_or_no_complete_trial_never_prune():
    best = fold_errors(5)
    other_ids = [f"x{i:03d}" for i in range(ROWS)]  # another dataset's (or fold seed's) rows
    worse_elsewhere = [predictions((np.sqrt(e) + 0.5) ** 2, other_ids) for e in best]
    assert pruned_after(study_with_best(PairedPruner(), best), worse_elsewhere) is None
    lonely = optuna.create_study(pruner=PairedPruner())  # no complete trial to pair with
    assert pruned_after(lonely, [predictions((np.sqrt(e) + 0.5) ** 2) for e in best]) is None


def test_the_pooled_rows_from_fold_0_on_and_n_warmup_steps():
    """After fold 1 the test pools folds 0 and 1; with n_warmup_steps=1 fold 0 never prunes."""
    best = fold_errors(6)
    worse = [predictions((np.sqrt(e) + 0.3) ** 2) for e in best]
    assert pruned_after(study_with_best(PairedPruner(n_warmup_steps=1), best), worse) == 1
    study = study_with_best(PairedPruner(), best)
    digests, pooled = pooled_errors(study.trials[0], 1)
    assert len(digests) == 2 and np.allclose(pooled, np.concatenate(best[:2]).astype(np.float32))


def test_errors_are_stored_in_row_id_order_whatever_the_frame_order():
    errors = fold_errors(7, 1)[0]
    frame = predictions(errors)
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert encode_errors(shuffled) == encode_errors(frame)


PAIRED = "ftsweep.search.paired.PairedPruner"
ONE_SIDED = " (one-sided: at 0.5 or above a trial whose estimate beats the best is stopped)"


@pytest.mark.parametrize("spec, message", [
    ({"_target_": PAIRED, "alpha": 1.5}, f"hydra.sweeper.pruner.alpha=1.5 must be a number in (0, 0.5){ONE_SIDED}."),
    ({"_target_": PAIRED, "alpha": "abc"}, f"hydra.sweeper.pruner.alpha='abc' must be a number in (0, 0.5){ONE_SIDED}."),
    ({"_target_": PAIRED, "test": "ttest"}, "hydra.sweeper.pruner.test='ttest': use one of t, bootstrap."),
    ({"_target_": PAIRED, "test": "wilcoxon"}, "hydra.sweeper.pruner.test='wilcoxon' is no longer offered (signed "
     "ranks test the typical row, not the mean that RMSE is, and stop better trials whose error is spread over many "
     "rows): use test=t."),
    ({"_target_": PAIRED, "min_delta": -0.1}, "hydra.sweeper.pruner.min_delta=-0.1 must be a number >= 0."),
    ({"_target_": PAIRED, "min_delta": float("nan")}, "hydra.sweeper.pruner.min_delta=nan must be a number >= 0."),  # it would never prune
    ({"_target_": PAIRED, "min_delta": True}, "hydra.sweeper.pruner.min_delta=true must be a number >= 0."),
    ({"_target_": PAIRED, "n_resamples": 1e12}, "hydra.sweeper.pruner.n_resamples=1000000000000.0 must be an integer "
                                                "in [100, 100000]."),  # 233 TiB at the first decision
    ({"_target_": PAIRED, "seed": -1}, "hydra.sweeper.pruner.seed=-1 must be an integer in [0, 4294967295]."),
    ({"_target_": PAIRED, "n_warmup_steps": 1.5}, "hydra.sweeper.pruner.n_warmup_steps=1.5 must be an integer in "
                                                  "[0, 1000000]."),
    ({"_target_": PAIRED, "n_warmup_steps": 5}, "hydra.sweeper.pruner.n_warmup_steps=5 but a trial runs 5 folds "
     "and can only be stopped before its last: this pruner could never stop a trial; use 0..3, or "
     "hydra/sweeper/pruner=none."),
    # the last fold's decision is never taken: a warm-up of 4 folds out of 5 is no pruning at all
    ({"_target_": PAIRED, "n_warmup_steps": 4}, "hydra.sweeper.pruner.n_warmup_steps=4 but a trial runs 5 folds "
     "and can only be stopped before its last: this pruner could never stop a trial; use 0..3, or "
     "hydra/sweeper/pruner=none."),
    # a whole-number float warms up as long as the integer (5.0 was let through where 5 was refused)
    ({"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 5.0}, "hydra.sweeper.pruner.n_warmup_steps=5 but "
     "a trial runs 5 folds and can only be stopped before its last: this pruner could never stop a trial; use 0..3, "
     "or hydra/sweeper/pruner=none."),
    ({"_target_": PAIRED, "n_warmup_steps": 4.0}, "hydra.sweeper.pruner.n_warmup_steps=4 but a trial runs 5 folds "
     "and can only be stopped before its last: this pruner could never stop a trial; use 0..3, or "
     "hydra/sweeper/pruner=none."),
    ({"_target_": "optuna.pruners.WilcoxonPruner", "n_startup_steps": 7}, "hydra.sweeper.pruner.n_startup_steps=7 "
     "but a trial runs 5 folds and can only be stopped before its last: this pruner could never stop a trial; "
     "use 0..3, or hydra/sweeper/pruner=none."),
    ({"_target_": "optuna.pruners.HyperbandPruner", "reduction_factor": 1}, "hydra.sweeper.pruner.reduction_factor=1 "
                                                                            "must be an integer >= 2."),
    ({"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 0}, "hydra.sweeper.pruner.min_resource=0 must "
                                                                        "be an integer >= 1."),
    ({"_target_": "optuna.pruners.ThresholdPruner", "upper": float("nan")}, "hydra.sweeper.pruner.upper=nan must be "
                                                                            "a number (or null: no bound)."),
    (42, "hydra.sweeper.pruner=42 is not a pruner's settings: choose one with hydra/sweeper/pruner=NAME (paired, "
         "median, wilcoxon, hyperband, threshold or none), then set its keys as hydra.sweeper.pruner.KEY=VALUE."),
])
def test_bad_pruner_settings_are_one_line_naming_the_key(spec, message):
    from omegaconf import OmegaConf

    with pytest.raises(FtsweepError) as err:
        check_pruner(OmegaConf.create(spec) if isinstance(spec, dict) else spec, n_folds=5)
    assert str(err.value) == message


def test_the_bootstrap_draws_in_blocks_give_the_p_value_of_one_draw(monkeypatch):
    """Resamples are drawn in blocks so memory stays flat on large data: the same p-value."""
    from ftsweep.search import paired

    rng = np.random.default_rng(1)
    best = rng.chisquare(1, 3000) * 0.25
    trial = best + rng.normal(0.002, 0.2, 3000)  # near the best: a p-value far from its floor
    whole = paired.p_worse(trial, best, 0.0, "bootstrap")
    draws = np.random.default_rng(0).integers(0, 3000, size=(2000, 3000))
    assert whole == (np.count_nonzero((trial - best)[draws].mean(axis=1) <= 0.0) + 1) / 2001
    monkeypatch.setattr(paired, "_RESAMPLE_BLOCK", 4000)  # one resample a block
    assert paired.p_worse(trial, best, 0.0, "bootstrap") == whole and 0.05 < whole < 0.95


@pytest.mark.parametrize("test", ["t", "bootstrap"])
def test_p_worse_on_many_trials_at_once_is_each_trial_s_p_value(test):
    """The calibration benchmark decides simulated trials in one call (rows on the last axis)."""
    rng = np.random.default_rng(2)
    best, trial = rng.chisquare(1, (3, 200)) * 0.25, rng.chisquare(1, (3, 200)) * 0.27
    together = p_worse(trial, best, 0.01, test)
    assert together.shape == (3,)
    assert together.tolist() == pytest.approx([p_worse(t, b, 0.01, test) for t, b in zip(trial, best, strict=True)], abs=1e-12)


def test_the_t_test_is_scipy_s_one_sided_t_test_and_a_trial_at_the_margin_gets_p_one_half():
    """Checked against scipy.stats and the RMSEs themselves, not against p_worse's own formula."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(3)
    best = rng.chisquare(1, 300) * 0.25
    trial = best + rng.normal(0.01, 0.1, 300)
    assert p_worse(trial, best, 0.0, "t") == pytest.approx(ttest_1samp(trial - best, 0.0, alternative="greater").pvalue)
    rmse = np.sqrt(best.mean())
    at_margin = best * ((rmse + 0.03) / rmse) ** 2  # every row scaled: RMSE exactly 0.03 above the best's
    assert np.sqrt(at_margin.mean()) - rmse == pytest.approx(0.03)
    assert p_worse(at_margin, best, 0.03, "t") == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("pruner", ["median", "wilcoxon", "paired"])
def test_what_a_trial_s_job_reports_after_each_fold(tmp_path, monkeypatch, pruner):
    """The running mean RMSE (median), each fold's own RMSE (Optuna's Wilcoxon pairs folds), and
    for the paired pruner the fold's per-row errors stored on the trial first."""

    from ftsweep.search import pruning

    made = {"median": optuna.pruners.MedianPruner(), "wilcoxon": optuna.pruners.WilcoxonPruner(),
            "paired": PairedPruner()}[pruner]
    monkeypatch.setattr(pruning, "_configured_pruner", lambda: made)
    report, storage = _reporter(tmp_path)
    folds = [predictions(e) for e in fold_errors(8, 2)]
    fold_rmse = [float(np.sqrt(np.mean(f["pred_best"] ** 2))) for f in folds]
    running = [fold_rmse[0], float(np.mean(fold_rmse))]
    assert [report(step, running[step], frame) for step, frame in enumerate(folds)] == [False, False]
    stored = optuna.load_study(study_name="s", storage=storage).trials[0]
    reported = [stored.intermediate_values[step] for step in (0, 1)]
    assert reported == pytest.approx(fold_rmse if pruner == "wilcoxon" else running, abs=1e-12)
    assert reported != pytest.approx(running if pruner == "wilcoxon" else fold_rmse, abs=1e-6)
    keys = sorted(k for k in stored.user_attrs if k.startswith("ftsweep.row_errors."))
    assert keys == (["ftsweep.row_errors.0", "ftsweep.row_errors.1"] if pruner == "paired" else [])


def _reporter(tmp_path):
    """A trial's fold reporter, as a search job builds it, on a new study; and the study's storage."""
    from omegaconf import OmegaConf

    from ftsweep.search import pruning

    storage = f"sqlite:///{tmp_path}/optuna.db"
    trial = optuna.create_study(study_name="s", storage=storage).ask()
    search = {"search": {"study": "s", "storage": storage, "trial_id": trial._trial_id}}
    return pruning.fold_reporter(OmegaConf.create(search)), storage


@pytest.mark.parametrize("objective", ["rmse_last", "oof"])
def test_a_trial_reports_the_objective_it_is_scored_by(tmp_path, monkeypatch, objective):
    """Under rmse_last the folds report the last weights' RMSE (and the paired pruner their per-row
    errors); under oof the RMSE of the rows pooled so far."""

    from ftsweep.search import pruning
    from ftsweep.search.paired import decode_errors

    monkeypatch.setattr(pruning, "_configured_pruner", PairedPruner)
    monkeypatch.setattr(pruning, "_configured_objective", lambda: objective)
    report, storage = _reporter(tmp_path)
    folds = [predictions(e) for e in fold_errors(8, 2)]
    for frame, last in zip(folds, fold_errors(9, 2), strict=True):
        frame["pred_last"] = np.sqrt(last)
    column = "pred_last" if objective == "rmse_last" else "pred_best"
    for step, frame in enumerate(folds):
        report(step, -1.0, frame)  # the running mean of rmse_best is not what these objectives report
    stored = optuna.load_study(study_name="s", storage=storage).trials[0]
    by_fold = [float(np.sqrt(np.mean(f[column] ** 2))) for f in folds]
    pooled = float(np.sqrt(np.mean(np.concatenate([f[column] ** 2 for f in folds]))))
    expected = [by_fold[0], float(np.mean(by_fold))] if objective == "rmse_last" else [by_fold[0], pooled]
    assert [stored.intermediate_values[step] for step in (0, 1)] == pytest.approx(expected, abs=1e-12)
    errors = decode_errors(stored.user_attrs["ftsweep.row_errors.1"])[1]
    assert errors == pytest.approx(folds[1].sort_values("id")[column].to_numpy() ** 2, rel=1e-6)  # float32


def test_a_study_continued_under_another_pruning_rule_says_so(caplog):
    from omegaconf import OmegaConf

    from ftsweep.search.settings import pruner_rule
    from ftsweep.search.study import note_pruner
    from ftsweep.tags import PRUNERS_ATTR

    median = pruner_rule(OmegaConf.create({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5}), "median")
    paired = pruner_rule(OmegaConf.create({"_target_": "ftsweep.search.paired.PairedPruner", "min_delta": 0.01,
                                           "alpha": 0.05}), None)
    assert (median, paired) == ("median(n_startup_trials=5)", "PairedPruner(alpha=0.05, min_delta=0.01)")
    assert pruner_rule(None, "none") == "none"
    study = optuna.create_study()
    note_pruner(study, median)
    note_pruner(study, paired)  # nothing finished under median yet: nothing to say
    said = lambda: [r.getMessage() for r in caplog.records if r.name == "ftsweep"]  # noqa: E731
    assert study.user_attrs[PRUNERS_ATTR] == [median, paired] and said() == []
    study.add_trial(optuna.trial.create_trial(value=0.5))
    with caplog.at_level("WARNING", logger="ftsweep"):
        note_pruner(study, median)
        note_pruner(study, median)  # the rule of the run before: nothing new
    assert said() == [
        f"search: study {study.study_name!r} was pruned by {paired} before; this run prunes by {median}, so its "
        f"pruned trials were stopped by different rules (give the earlier pruner's settings to keep one rule)."]
    assert study.user_attrs[PRUNERS_ATTR] == [median, paired, median]


def test_whole_number_floats_are_taken_for_the_paired_pruner_s_integers():
    """hydra.sweeper.pruner.n_resamples=2e3 is Hydra's float 2000.0: taken, as hydra.sweeper.n_trials=1e3 is
    (refused before)."""
    from omegaconf import OmegaConf

    check_pruner(OmegaConf.create({"_target_": PAIRED, "test": "bootstrap", "n_resamples": 2e3, "n_warmup_steps": 1.0,
                                   "seed": 3.0}), n_folds=5)
    pruner = PairedPruner(test="bootstrap", n_resamples=2e3, n_warmup_steps=1.0, seed=3.0)
    assert (pruner.n_resamples, pruner.n_warmup_steps, pruner.seed) == (2000, 1, 3)
    assert all(type(v) is int for v in (pruner.n_resamples, pruner.n_warmup_steps, pruner.seed))
