"""Search end to end through the real command line (tiny model, 3 folds): fold-level pruning,
one MLflow parent per trial, the summary and best.yaml, resuming a killed search, seeds,
hydra-optuna-sweeper style configs, and one-line errors before any trial."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from ftsweep.jobs import INTERRUPTED
from ftsweep.search.settings import make_sampler

from helpers import ROOT, TINY, at_once, cli_env, free_port, run_cli

pytestmark = pytest.mark.slow

SMALL = [*TINY, "cv.n_folds=3", "data.max_rows=48"]


def readme_search(start: str) -> list[str]:
    """A command of the README's Search section, as its words (shell quoting undone)."""
    section = (ROOT / "README.md").read_text().split("## Search:", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith(f"python -m ftsweep {start}"))
    return shlex.split(line.split("  #")[0])[3:]


def tiny(words: list[str]) -> list[str]:
    """A README command for the tiny 2-layer model (re-init depth at most 2; trial counts set by the test)."""
    words = [w.replace("reinit.n=range(0, 4)", "reinit.n=range(0, 3)") for w in words if "n_trials" not in w]
    return [*words, *SMALL]


README_SEARCH = tiny(readme_search("-m hydra/sweeper=optuna"))


def _study(out, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/optuna.db")


def _runs(out, experiment):
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=5000)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """6 trials, median pruning from the second trial on."""
    out = tmp_path_factory.mktemp("search")
    args = [*README_SEARCH, "tracking.experiment=s6", "hydra.sweeper.n_trials=6", "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=1", f"paths.output_root={out}"]
    done = run_cli("ftsweep", *args, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, args, done


def test_pruned_trials_stop_after_a_fold_and_mlflow_holds_one_parent_per_trial(searched):
    out, _, done = searched
    trials = _study(out, "s6").get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(max(t.intermediate_values) in (0, 1) for t in pruned)  # stopped after fold 0 or 1

    _, runs = _runs(out, "s6")
    parents = [r for r in runs if "ftsweep.fold" not in r.data.tags and "ftsweep.trial" in r.data.tags]
    assert sorted(int(r.data.tags["ftsweep.trial"]) for r in parents) == list(range(6))  # one per trial
    for trial in trials:
        (parent,) = [r for r in parents if r.data.tags["ftsweep.trial"] == str(trial.number)]
        folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert all(r.info.status == "FINISHED" for r in folds)
        if trial.state == TrialState.PRUNED:
            stopped = max(trial.intermediate_values)
            assert parent.info.status == "KILLED" and parent.data.tags["ftsweep.pruned"] == str(stopped)
            assert len(folds) == stopped + 1 and "rmse_mean" not in parent.data.metrics
        else:
            assert parent.info.status == "FINISHED" and len(folds) == 3
            assert parent.data.metrics["rmse_mean"] == pytest.approx(trial.value)
    assert "Pruned trials (stopped early, not ranked)" in done.stdout


def _trial_numbers(labels: list[str]) -> list[int]:
    """'trial 3: optimizer.lr=...' (a row label, or a markdown row '| trial 3: ... |') -> 3."""
    return [int(re.match(r"\|? ?trial (\d+): ", label).group(1)) for label in labels]


def test_pruned_trials_are_listed_apart_and_never_ranked(searched):
    out, _, done = searched
    trials = _study(out, "s6").get_trials()[:6]  # the fixture's six (a later test adds a seventh)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert complete and pruned and len(complete) + len(pruned) == 6
    folder = Path(re.search(r"^written: (.+)$", done.stdout, re.M).group(1))
    markdown = (folder / "top_trials.md").read_text()
    assert markdown.strip() in done.stdout  # what the search printed
    ranked, apart = markdown.split("Pruned trials (stopped early, not ranked):")
    # ranked: exactly the complete trials, best first, in the table and in top_trials.csv
    assert _trial_numbers([r for r in ranked.splitlines() if r.startswith("| trial ")]) == [t.number for t in complete]
    labels = pd.read_csv(folder / "top_trials.csv")["label"].tolist()
    assert _trial_numbers(labels) == [t.number for t in complete]
    # apart: each pruned trial once, with the folds it ran and the running mean its pruner saw
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in apart.splitlines() if r.startswith("| trial ")]
    assert sorted((n, cells[1:]) for n, cells in zip(_trial_numbers([r[0] for r in rows]), rows, strict=True)) == sorted(
        (t.number, [str(last + 1), f"{t.intermediate_values[last]:.4f}", str(last)])
        for t in pruned for last in [max(t.intermediate_values)])


def test_the_summary_names_the_best_config_and_best_yaml_composes_to_it(searched):
    out, _, done = searched
    study = _study(out, "s6")
    best = study.best_trial
    assert f"Best: trial {best.number}, mean CV RMSE {best.value:.4f}" in done.stdout
    folder = next(out.glob("multirun/*/*/search"))
    assert {p.name for p in folder.iterdir()} >= {"best.yaml", "top_trials.md", "top_trials.csv",
                                                   "optimization_history.png", "param_importances.png"}
    top = (folder / "top_trials.md").read_text().splitlines()
    assert top[2].startswith(f"| trial {best.number}: ") and top[2].endswith("| baseline | – |")  # ranked first

    client, runs = _runs(out, "s6")
    (summary,) = [r for r in runs if r.data.tags.get("ftsweep.kind") == "search summary"]
    assert summary.data.metrics["best_rmse"] == pytest.approx(best.value)
    assert summary.data.metrics["folds_trained"] < 6 * 3  # pruning saved folds
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} >= {
        "best.yaml", "top_trials.md", "optimization_history.png", "param_importances.png"}

    composed = run_cli("ftsweep", "--config-dir", str(folder), "--config-name", "best", "--cfg", "job", cwd=out)
    assert composed.returncode == 0, composed.stderr[-2000:]
    cfg = yaml.safe_load(composed.stdout)
    (parent,) = [r for r in runs if r.data.tags.get("ftsweep.trial") == str(best.number)
                 and "ftsweep.fold" not in r.data.tags]
    for key, value in best.params.items():  # the best trial's values, and its logged config
        section, name = key.split(".")
        assert cfg[section][name] == value
        assert parent.data.params[key] == str(value)
    assert cfg["optimizer"]["name"] == parent.data.params["optimizer.name"] and cfg["trainer"]["max_steps"] == 6


def test_the_same_sampler_seed_proposes_the_same_first_trials(searched):
    """A new study with tpe.yaml's sampler (seed 42) asks what the CLI's search asked first."""
    out, _, _ = searched
    trials = _study(out, "s6").get_trials()[:3]
    spec = OmegaConf.load(ROOT / "conf" / "hydra" / "sweeper" / "sampler" / "tpe.yaml")
    again = optuna.create_study(sampler=make_sampler(spec, 0))
    assert [again.ask(t.distributions).params for t in trials] == [t.params for t in trials]


def test_a_rerun_continues_the_same_study_up_to_n_trials(searched):
    out, args, _ = searched
    more = run_cli("ftsweep", *[a for a in args if "n_trials" not in a], "hydra.sweeper.n_trials=7", cwd=out)
    assert more.returncode == 0, more.stderr[-2000:]
    assert len(_study(out, "s6").get_trials()) == 7  # one more trial, not seven


def test_replaying_median_pruning_on_the_stored_trials_reproduces_the_live_decisions(searched, tmp_path):
    """benchmarks/replay_pruners.py feeds the trials' logged folds (in trial order) to a fresh
    MedianPruner with the live search's settings: the same trials stop after the same folds."""
    out, _, _ = searched
    live = _study(out, "s6").get_trials()
    stopped = {t.number: max(t.intermediate_values) for t in live if t.state == TrialState.PRUNED}
    assert stopped  # the live search pruned something to reproduce
    replay = _benchmark("replay_pruners")
    result = replay.main(["--experiment", "s6", "--tracking-uri", f"sqlite:///{out}/mlflow.db", "--median-startup",
                          "1", "--json", str(tmp_path / "replay.json")])
    rows = {row["pruner"]: row for row in result["pruners"]}
    assert rows["median"]["pruned_after"] == {str(k): v for k, v in stopped.items()}
    assert rows["median"]["unknown"] == [] and rows["median"]["best_trial"] == _study(out, "s6").best_trial.number
    _, runs = _runs(out, "s6")
    fold_runs = [r for r in runs if "ftsweep.fold" in r.data.tags and r.info.status == "FINISHED"]
    assert rows["median"]["folds_trained"] == len(fold_runs) < len(live) * 3
    # without pruning, the trials the live search stopped are unknown past their last fold
    assert rows["none"]["unknown"] == sorted(stopped) and rows["none"]["folds_trained"] == len(fold_runs)


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_make_dashboard_serves_the_study_with_each_trial_linked_to_its_mlflow_run(searched):
    """`make dashboard` (Optuna Dashboard) over a finished study: its API lists the study, and each
    trial's user attribute names the MLflow parent run tagged with the same study and trial."""
    out, _, _ = searched
    port = free_port()
    venv = Path(sys.executable).parent.parent
    proc = subprocess.Popen(["make", "-s", "dashboard", f"OUTPUTS={out}", f"DASHBOARD_PORT={port}", f"VENV={venv}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        studies = _get_json(f"http://127.0.0.1:{port}/api/studies", proc)
        (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == "s6"]
        study = _get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the dashboard it started
        proc.wait(timeout=120)  # SIGTERM ends it in seconds; the bound is for a loaded box
    assert sorted(t["number"] for t in study["trials"]) == [t.number for t in _study(out, "s6").get_trials()]
    _, runs = _runs(out, "s6")
    parents = {r.info.run_id: r for r in runs if "ftsweep.fold" not in r.data.tags and "ftsweep.trial" in r.data.tags}
    for trial in study["trials"]:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        run = parents[attrs["ftsweep.mlflow_run_id"]]
        assert run.data.tags["ftsweep.trial"] == str(trial["number"]) and run.data.tags["ftsweep.study"] == "s6"
    assert {a["key"]: a["value"] for a in summary["user_attrs"]}["ftsweep.data_fingerprint"] == \
        next(iter(parents.values())).data.tags["ftsweep.data_fingerprint"]


def _get_json(url: str, proc: subprocess.Popen, seconds: float = 60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {seconds} s")


def _intermediate_steps(db, number):
    """Read-only, closed at once: an open connection would hold up the search's writes."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
        try:
            return con.execute("SELECT count(*) FROM trial_intermediate_values v JOIN trials t "
                               "ON v.trial_id = t.trial_id WHERE t.number = ?", (number,)).fetchone()[0]
        except sqlite3.OperationalError:  # no schema yet, or busy: look again
            return 0


def test_a_search_killed_midway_resumes_without_duplicates(tmp_path):
    args = [*tiny(readme_search("+sweep=search_llrd ")), "trainer.max_steps=10", "reinit.n=range(0, 3)",
            "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "ftsweep", *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:  # trial 1 has finished its first fold
        if (tmp_path / "optuna.db").exists() and _intermediate_steps(tmp_path / "optuna.db", 1) >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # trial 1 has two folds left: seconds, where the signal takes milliseconds
    _, err = proc.communicate(timeout=180)  # it closes its runs in seconds; the bound is for a loaded 2-core box
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == INTERRUPTED, err[-3000:]
    assert _study(tmp_path, "search_llrd").get_trials()[1].state == TrialState.RUNNING

    rerun = run_cli("ftsweep", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = _study(tmp_path, "search_llrd").get_trials()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 2
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.number == 1 and failed.user_attrs["ftsweep.interrupted"]
    # trial 2 is trial 1's retry: its lineage, its parameters
    assert [(t.number, t.user_attrs["ftsweep.lineage"]) for t in counted] == [(0, 0), (2, 1)]
    assert trials[2].params == failed.params

    _, runs = _runs(tmp_path, "search_llrd")
    parents = [r for r in runs if "ftsweep.fold" not in r.data.tags and "ftsweep.trial" in r.data.tags]
    assert sorted(r.data.tags["ftsweep.trial"] for r in parents) == ["0", "1"]  # one parent per lineage
    assert all(r.info.status == "FINISHED" for r in parents)
    finished = [(r.data.tags["ftsweep.trial"], r.data.tags["ftsweep.fold"]) for r in runs
                if "ftsweep.fold" in r.data.tags and r.info.status == "FINISHED"]
    assert sorted(finished) == [(str(t), str(f)) for t in (0, 1) for f in range(3)]  # fold 0 of trial 1 reused


def _training_pid(db) -> int | None:
    """Once a fold run has FINISHED, the pid of the process training another one (its owner tag, or
    its parent's); read-only SQL on the MLflow store."""
    if not db.exists():
        return None
    query = ("SELECT r.status, coalesce(own.value, parent_own.value) FROM runs r "
             "JOIN tags fold ON fold.run_uuid = r.run_uuid AND fold.key = 'ftsweep.fold' "
             "LEFT JOIN tags own ON own.run_uuid = r.run_uuid AND own.key = 'ftsweep.owner' "
             "LEFT JOIN tags parent ON parent.run_uuid = r.run_uuid AND parent.key = 'mlflow.parentRunId' "
             "LEFT JOIN tags parent_own ON parent_own.run_uuid = parent.value AND parent_own.key = 'ftsweep.owner'")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            rows = con.execute(query).fetchall()
    except sqlite3.OperationalError:  # no schema yet, or a writer holds the lock: look again
        return None
    training = [owner for status, owner in rows if status == "RUNNING" and owner]
    if "FINISHED" not in [status for status, _ in rows] or not training:
        return None
    return int(training[0].rsplit(":", 2)[1])  # machine:pid:start


def test_a_trial_whose_joblib_worker_is_killed_runs_again_and_keeps_its_finished_fold(tmp_path):
    """kill -9 of the joblib worker running a trial (what the out-of-memory killer does), through the
    real launcher: the search runs the trial again once, in a new worker, with its parameters and
    lineage; the retry reuses the finished fold, marks the killed fold's run KILLED and trains it
    again; exit 0, the attempt counted as retried, not failed. (test_search_loop.py: the same
    logic with a stand-in launcher, and a second death.)"""
    args = [*tiny(readme_search("+sweep=search_llrd hydra/launcher=joblib")), "hydra.sweeper.n_jobs=1",
            "trainer.max_steps=30", "reinit.n=range(0, 3)", "hydra.sweeper.n_trials=1",
            "hydra/sweeper/pruner=none", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "ftsweep", *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, worker = time.time() + 180, None
        while time.time() < deadline and proc.poll() is None and not (worker := _training_pid(tmp_path / "mlflow.db")):
            time.sleep(0.1)
        assert worker and worker != proc.pid, worker  # a joblib worker, not the search's own process
        os.kill(worker, signal.SIGKILL)  # fold 1 has 30 steps to go: seconds, where the kill is at once
        out, err = proc.communicate(timeout=300)  # a new worker imports torch again: a bound for a loaded box
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "Search 'search_llrd': 1 complete, 0 pruned, 0 failed trial(s) (1 attempt(s) cut short and retried)" in out
    died, retry = _study(tmp_path, "search_llrd").get_trials()
    assert died.state == TrialState.FAIL and died.user_attrs["ftsweep.interrupted"] is True
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["ftsweep.died"]
    assert retry.user_attrs["ftsweep.lineage"] == died.user_attrs["ftsweep.lineage"] == 0
    assert retry.params == died.params
    _, runs = _runs(tmp_path, "search_llrd")
    assert "RUNNING" not in {r.info.status for r in runs}
    (parent,) = [r for r in runs if "ftsweep.fold" not in r.data.tags and "ftsweep.trial" in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.tags["ftsweep.trial"] == "0"
    folds = sorted((r.data.tags["ftsweep.fold"], r.info.status) for r in runs if "ftsweep.fold" in r.data.tags)
    assert folds == [("0", "FINISHED"), ("1", "FINISHED"), ("1", "KILLED"), ("2", "FINISHED")]  # fold 0 reused


def test_parallel_trials_through_joblib_never_wait_for_a_batch(tmp_path):
    """n_jobs=2: trial 2 starts when trial 1 ends, while trial 0 still runs (a batch barrier would
    start it after both). Trial 0's job is held at its end until two other trials have ended
    (tests/job_gate.py), so the order never rests on one trial being slow enough; with a barrier
    the hold times out and the order check below fails."""
    words = tiny(readme_search("+sweep=search_llrd hydra/launcher=joblib"))
    assert "hydra.sweeper.n_jobs=2" in words and "hydra/launcher=joblib" in words
    done = run_cli("ftsweep", *words, "reinit.n=range(0, 3)", "cv.n_folds=2", "trainer.max_steps=choice(6, 7)",
                   "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=3",
                   "+hydra.callbacks.gate._target_=job_gate.HoldJob", f"+hydra.callbacks.gate.folder={tmp_path}/gate",
                   "+hydra.callbacks.gate.key=trainer.max_steps", "+hydra.callbacks.gate.value=7",
                   "+hydra.callbacks.gate.others=2", f"paths.output_root={tmp_path}", cwd=tmp_path, timeout=480,
                   env={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "gate" / "released").read_text() == "after 2 ended"  # the gate held trial 0
    trials = _study(tmp_path, "search_llrd").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # the random sampler (seed 42) gives trial 0 the held value; the rest of the test relies on it
    assert [t.params["trainer.max_steps"] for t in trials] == [7, 6, 6]
    held, short, later = trials
    assert short.datetime_complete <= later.datetime_start < held.datetime_complete
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)  # reported from the workers
    assert len({t.user_attrs["ftsweep.owner"] for t in trials}) == 1  # held by the sweep, not the workers
    _, runs = _runs(tmp_path, "search_llrd")  # each trial one finished MLflow parent (trial 0's ends before its hold)
    parents = sorted((r.data.tags["ftsweep.trial"], r.info.status) for r in runs if "ftsweep.fold" not in r.data.tags
                     and "ftsweep.trial" in r.data.tags)
    assert parents == [("0", "FINISHED"), ("1", "FINISHED"), ("2", "FINISHED")]


def test_a_budget_stops_starting_trials_and_the_search_ends_well(tmp_path):
    """hydra.sweeper.timeout=1: the first trial starts at once and takes longer than a second (a
    tiny trial still builds two fold models and logs them), so far fewer than the 50 trials asked
    for start; the running one finishes and the command ends with exit 0, saying why it stopped."""
    done = run_cli("ftsweep", "-m", "hydra/sweeper=optuna", "model.lr=interval(1e-5, 1e-3)", *TINY,
                   "hydra.sweeper.n_trials=50", "hydra.sweeper.timeout=1", "hydra/sweeper/pruner=none",
                   f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ended = [line for line in done.stdout.splitlines() if line.startswith("The budget ended the search")]
    assert len(ended) == 1 and "hydra.sweeper.timeout=1 s had passed, so no trial started after it" in ended[0]
    name = "sweep " + " ".join(sorted(["model.lr=interval(1e-5, 1e-3)", *TINY]))  # hydra.* names nothing
    trials = _study(tmp_path, name).get_trials()
    assert 1 <= len(trials) < 50 and {t.state for t in trials} == {TrialState.COMPLETE}


def test_a_hydra_optuna_sweeper_config_works_unchanged(tmp_path):
    """lightning-hydra-template's hparams_search shape, with that plugin's class path."""
    (tmp_path / "extra" / "hparams_search").mkdir(parents=True)
    (tmp_path / "extra" / "hparams_search" / "optuna.yaml").write_text("""# @package _global_
defaults:
  - override /hydra/sweeper: optuna
hydra:
  mode: "MULTIRUN"
  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: lightning_style
    n_jobs: 1
    direction: minimize
    n_trials: 2
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10
    params:
      model.lr: interval(0.0001, 0.1)
      trainer.grad_accum_steps: choice(1, 2)
""")
    done = run_cli("ftsweep", "--config-dir", str(tmp_path / "extra"), "+hparams_search=optuna", *SMALL,
                   f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _study(tmp_path, "lightning_style").get_trials()
    assert len(trials) == 2 and {type(t.params["trainer.grad_accum_steps"]) for t in trials} == {int}


# Empty intervals, n_trials=0 and the rest: tests/test_search_space.py; here, that the CLI says them in one line.
BAD_SEARCHES = [
    (["model.lrr=interval(1e-5, 1e-4)"], "unknown key model.lrr in model.lrr=interval(1e-5, 1e-4): did you mean model.lr?"),
    (["model.lr=interval(1e-5, 3e-4)", "hydra.sweeper.n_trials=0"], "n_trials=0 must be a whole number >= 1"),
    (["model.lr=interval(1e-5"], "cannot read the override 'model.lr=interval(1e-5'"),
    # beyond the tiny model's 2 layers, at the range's end (a preset's range says the same)
    (["reinit.n=range(0, 5)"], "the search space of reinit.n (the command line's, or the preset's "
                               "hydra.sweeper.params) reaches reinit.n=4: reinit.n=4 but tiny-bert has 2 encoder "
                               "layers; use 0..2. Narrow it on the command line."),
    (["model.lr=interval(1e-5, 1e-4)", "data=commonlit", "data.path=missing.csv"], "missing.csv"),  # no trial runs
    # one dataset and one fold assignment per study: trials on other rows cannot be ranked together
    (["data.max_rows=choice(40,64)", "cv.fold_seed=choice(1,2)"],
     "the search space includes data.max_rows, cv.fold_seed: trials would be scored on other rows or other folds "
     "and could not be compared; run one study per dataset and fold assignment (set data.max_rows=VALUE as a fixed "
     "override, once per value)."),
    (["model.lr=interval(1e-5, 1e-4)", "hydra.sweeper.objective=rmse"],
     "hydra.sweeper.objective='rmse' is not one of rmse_best, rmse_last, oof."),
]


def test_bad_searches_are_one_line_and_exit_2_before_any_trial(tmp_path):
    for i, (extra, words) in enumerate(BAD_SEARCHES):
        (tmp_path / str(i)).mkdir()
        done = run_cli("ftsweep", "-m", "hydra/sweeper=optuna", *SMALL, *extra, f"paths.output_root={tmp_path / str(i)}",
                       cwd=tmp_path / str(i))
        assert done.returncode == 2, (extra, done.stderr[-2000:])
        lines = [line for line in done.stderr.splitlines() if line.startswith("ftsweep: error:")]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in done.stderr, (extra, done.stderr[-2000:])
        db = tmp_path / str(i) / "optuna.db"
        assert not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")  # no trial, no study


NAN_SEARCH = ["-m", "hydra/sweeper=optuna", "model.lr=interval(1e6, 1e7)", *SMALL, "hydra.sweeper.n_trials=2"]
NAN = "the training loss became nan at step 1"


def test_a_search_whose_trials_all_fail_exits_1_and_names_them(tmp_path):
    """The loss becomes NaN in every trial. With max_failure_rate=0 the search stops after the
    first failure; with 1.0 it launches n_trials (failed trials do not count toward n_trials)
    and stops there. Either way: exit 1, each failed trial named with its reason, no advice
    about pruning."""
    with at_once() as start:
        stops = start(run_cli, "ftsweep", *NAN_SEARCH, f"paths.output_root={tmp_path / 'a'}", cwd=tmp_path)
        tolerant = start(run_cli, "ftsweep", *NAN_SEARCH, "hydra.sweeper.max_failure_rate=1.0",
                         f"paths.output_root={tmp_path / 'b'}", cwd=tmp_path)
    for done, n in ((stops.result(), 1), (tolerant.result(), 2)):
        assert done.returncode == 1, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("ftsweep: error:")]
        assert errors == [f"ftsweep: error: {n} of {n} trial(s) of this run failed; fix what they say and rerun the "
                          f"same command: the study goes on, failed trials are not counted:"], done.stderr[-2000:]
        named = [line.strip() for line in done.stderr.splitlines() if line.startswith("  trial ")]
        assert [line.split(": ", 1)[0] for line in named] == [f"trial {i} (job {i})" for i in range(n)]
        assert all(NAN in line for line in named)
        assert "no trial has finished all its folds: no best config yet.\n" in done.stdout
        assert "Raise hydra.sweeper.n_trials" not in done.stdout and "Traceback" not in done.stderr
    name = "sweep " + " ".join(sorted(o for o in NAN_SEARCH[2:] if not o.startswith("hydra.")))
    assert [t.state for t in _study(tmp_path / "a", name).get_trials()] == [TrialState.FAIL]
    assert [t.state for t in _study(tmp_path / "b", name).get_trials()] == [TrialState.FAIL] * 2
