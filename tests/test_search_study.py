"""A study belongs to one dataset and one set of fixed overrides, and the paired pruner through
the real command line (tiny model, 2 folds, a CSV of 64 rows)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ftsweep.data.demo import generate
from ftsweep.search.paired import decode_errors, encode_errors
from ftsweep.tags import ROW_ERRORS_ATTR

from helpers import ROOT, TINY, at_once, run_cli

pytestmark = pytest.mark.slow


def _study(out, name="paired"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/optuna.db")


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """4 trials of model.lr in (1.0, 0.001): lr=1.0 diverges (RMSE ~20 after fold 0), 0.001 trains."""
    out = tmp_path_factory.mktemp("paired")
    generate(n_rows=64, words_per_passage=25, seed=0).to_csv(out / "d.csv", index=False)
    args = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=paired",
            "model.lr=choice(1.0, 0.001)", *TINY, "data=commonlit", f"data.path={out / 'd.csv'}",
            "tracking.experiment=paired", "hydra.sweeper.n_trials=4", f"paths.output_root={out}"]
    done = run_cli("ftsweep", *args, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, args, done


def test_the_paired_pruner_stops_a_clearly_worse_trial_after_fold_0_and_never_an_identical_one(paired):
    out, _, _ = paired
    trials = _study(out).get_trials()
    # the random sampler (seed 42) proposes good, bad, bad, good; the assertions below rely on it
    assert [t.params["model.lr"] for t in trials] == [0.001, 1.0, 1.0, 0.001]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED,
                                         TrialState.COMPLETE]
    assert [list(t.intermediate_values) for t in trials[1:3]] == [[0], [0]]  # stopped after fold 0
    assert _study(out).user_attrs["ftsweep.pruners"] == [  # the rule, as the command chose it
        "paired(alpha=0.05, min_delta=0.01, n_resamples=2000, n_warmup_steps=0, seed=0, test=t)"]
    first, _, _, again = trials  # the same config and seed: the same errors on every row, never pruned
    assert again.intermediate_values == first.intermediate_values and again.value == first.value
    for step in (0, 1):
        key = ROW_ERRORS_ATTR.format(step=step)
        assert again.user_attrs[key] == first.user_attrs[key]

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("paired")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = {r.info.run_id: r for r in runs if "ftsweep.fold" not in r.data.tags and "ftsweep.trial" in r.data.tags}
    for trial in trials:  # the trial -> run link, and the run's tags back to the trial
        run = parents[trial.user_attrs["ftsweep.mlflow_run_id"]]
        assert run.data.tags["ftsweep.trial"] == str(trial.number) and run.data.tags["ftsweep.study"] == "paired"
        folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        if trial.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["ftsweep.pruned"] == "0" and len(folds) == 1
            # what the pruner saw: every row of fold 0 worse than the best trial's
            worse, best = (decode_errors(t.user_attrs[ROW_ERRORS_ATTR.format(step=0)])[1] for t in (trial, first))
            assert len(worse) == 32 and (worse > best).mean() > 0.9


def test_replaying_the_paired_pruner_on_the_stored_trials_reproduces_the_live_decisions(paired, tmp_path):
    """benchmarks/replay_pruners.py rebuilds each fold's errors from the logged predictions.csv: the
    very bytes the live trial stored, so the same p-values and the same trials stopped after the
    same folds, with paired.yaml's settings."""
    out, _, _ = paired
    live = _study(out).get_trials()
    stopped = {t.number: max(t.intermediate_values) for t in live if t.state == TrialState.PRUNED}
    assert stopped
    spec = importlib.util.spec_from_file_location("replay_pruners", ROOT / "benchmarks" / "replay_pruners.py")
    replay = importlib.util.module_from_spec(spec)
    sys.modules["replay_pruners"] = replay  # its dataclasses look their module up there
    spec.loader.exec_module(replay)
    from ftsweep.tracking.store import Tracker

    _, trials = replay.load_trials(Tracker(f"sqlite:///{out}/mlflow.db", "paired", create=False), "paired", True)
    for trial in trials:
        for position, frame in enumerate(trial.predictions):
            key = ROW_ERRORS_ATTR.format(step=position)
            assert encode_errors(frame) == live[trial.number].user_attrs[key], (trial.number, key)
    result = replay.main(["--experiment", "paired", "--study", "paired", "--tracking-uri", f"sqlite:///{out}/mlflow.db",
                          "--pruners", "paired", "--json", str(tmp_path / "replay.json")])
    (row,) = result["pruners"]
    assert row["pruned_after"] == {str(k): v for k, v in stopped.items()} and row["unknown"] == []
    assert row["best_trial"] == _study(out).best_trial.number
    assert row["folds_trained"] == sum(len(t.intermediate_values) for t in live)


def test_a_rerun_on_changed_data_or_fixed_overrides_is_refused_and_keeps_the_answer(paired):
    """The issue's case: every target x3 in the same file, the same command: before, nothing
    trained and the old best was printed and best.yaml rewritten. Now one line, exit 2, nothing
    written; the option it names starts a new study on the new rows."""
    out, args, _ = paired
    study = _study(out)
    before = (study.user_attrs["ftsweep.data_fingerprint"], len(study.trials))
    best_yaml = next(out.glob("multirun/*/*/search/best.yaml"))
    answer = best_yaml.read_text()
    # the same rows in another file (a moved file is the same data), but another fixed override
    (out / "same.csv").write_bytes((out / "d.csv").read_bytes())
    other_steps = [a.replace("trainer.max_steps=6", "trainer.max_steps=5").replace("d.csv", "same.csv") for a in args]
    frame = pd.read_csv(out / "d.csv")
    frame["target"] *= 3
    frame.to_csv(out / "d.csv", index=False)
    with at_once() as start:
        refused = start(run_cli, "ftsweep", *other_steps, cwd=out)
        changed = start(run_cli, "ftsweep", *args, cwd=out)
        fresh = start(run_cli, "ftsweep", *args, "hydra.sweeper.study_name=paired x3", "hydra.sweeper.n_trials=1",
                      cwd=out)
    for done, words in ((changed.result(), "was run on other data (rows fingerprint "),
                        (refused.result(), "was run with other fixed overrides (now also trainer.max_steps=5; no "
                                           "longer trainer.max_steps=6)")):
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("ftsweep: error:")]
        assert line.startswith(f"ftsweep: error: study 'paired' in sqlite:///{out}/optuna.db {words}")
        assert "start a new study with hydra.sweeper.study_name=NEW_NAME" in line
        assert "Best:" not in done.stdout and "Traceback" not in done.stderr
    fresh = fresh.result()
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    written = {p.parent for p in out.glob("multirun/*/*/search/best.yaml")}
    assert written == {best_yaml.parent, next(Path(line[len("written: "):]) for line in fresh.stdout.splitlines()
                                              if line.startswith("written: "))}  # none from the refused runs
    assert best_yaml.read_text() == answer
    study = _study(out)
    assert (study.user_attrs["ftsweep.data_fingerprint"], len(study.trials)) == before
    new = _study(out, "paired x3")
    assert len(new.trials) == 1 and new.user_attrs["ftsweep.data_fingerprint"] != before[0]
    assert f"Best: trial 0, mean CV RMSE {new.best_value:.4f}" in fresh.stdout
