"""The trial loop with a fake launcher (no training): n_jobs trials in flight without a batch
barrier when the launcher takes concurrent launches, batches otherwise; unique job numbers;
failed trials named; which of Hydra's launchers take concurrent launches."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from ftsweep.cv.job import TrialReport
from ftsweep.search.loop import Launcher, run_trials
from ftsweep.search.settings import Settings
from ftsweep.search.space import SearchSpace
from hydra_plugins.ftsweep_optuna_sweeper.optuna_sweeper import concurrent_launches


class FakeLauncher:
    """Jobs that take `seconds[trial lineage]` and return what ftsweep's job returns; records
    each job's (start, end) and number, and the most launch() calls in progress at once."""

    def __init__(self, seconds: dict[int, float], failing: frozenset[int] = frozenset()):
        self.seconds, self.failing = seconds, failing
        self.spans: dict[int, tuple[float, float]] = {}
        self.job_numbers: list[int] = []
        self.active = self.most_active = 0
        self._lock = threading.Lock()

    def launch(self, jobs: list[list[str]], first: int) -> list[JobReturn]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        returns = []
        for number, overrides in enumerate(jobs, start=first):
            trial = int(next(o for o in overrides if o.startswith("search.lineage=")).split("=")[1])
            start = time.monotonic()
            time.sleep(self.seconds.get(trial, 0.05))
            self.spans[trial] = (start, time.monotonic())
            self.job_numbers.append(number)
            ret = JobReturn()
            if trial in self.failing:
                ret.status, ret.return_value = JobStatus.FAILED, RuntimeError(f"trial {trial} broke")
            else:
                ret.status = JobStatus.COMPLETED
                scores = {"rmse_best": 1.0 + trial / 10, "rmse_last": 2.0 + trial / 10, "oof": 3.0 + trial / 10}
                ret.return_value = TrialReport(scores, pruned_at=None, held=False, run_id=f"run-{trial}")
            returns.append(ret)
        with self._lock:
            self.active -= 1
        return returns


def settings(n_trials: int, n_jobs: int, max_failure_rate: float = 0.0, objective: str = "rmse_best",
             timeout: float | None = None) -> Settings:
    return Settings("minimize", n_trials, n_jobs, max_failure_rate, "s", "sqlite:///unused.db", None, None, 10,
                    objective, timeout)


def search(fake: FakeLauncher, concurrent: bool, n_trials: int, n_jobs: int, rate: float = 0.0,
           objective: str = "rmse_best"):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace(params={"x": CategoricalDistribution([1, 2])}, fixed=["model=tiny"])
    outcome = run_trials(study, space, settings(n_trials, n_jobs, rate, objective), Launcher(fake.launch, concurrent),
                         None)
    return study, outcome


@pytest.mark.parametrize("concurrent", [False, True])
def test_no_trial_starts_after_the_budget_and_running_ones_finish(monkeypatch, concurrent):
    """A clock that moves 10 s at each look: the search starts at 0, the looks before launching at 10
    and 20 s are inside the 25 s budget, the one at 30 s is not; the trials launched are all told."""
    from ftsweep.search import loop

    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(loop, "clock", lambda: float(next(ticks)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace(params={"x": CategoricalDistribution([1, 2])}, fixed=["model=tiny"])
    fake = FakeLauncher({})
    outcome = run_trials(study, space, settings(10, 1, timeout=25.0), Launcher(fake.launch, concurrent), None)
    assert outcome.out_of_time and outcome.complete == 2 and len(study.trials) == 2
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_without_a_budget_every_trial_runs(monkeypatch):
    from ftsweep.search import loop

    monkeypatch.setattr(loop, "clock", lambda: 1e12)  # however late: no budget, no stop
    study, outcome = search(FakeLauncher({}), concurrent=False, n_trials=4, n_jobs=1)
    assert not outcome.out_of_time and outcome.complete == 4


@pytest.mark.parametrize(("objective", "first"), [("rmse_best", 1.0), ("rmse_last", 2.0), ("oof", 3.0)])
def test_the_study_is_told_the_chosen_objective(objective, first):
    study, outcome = search(FakeLauncher({}), concurrent=False, n_trials=3, n_jobs=1, objective=objective)
    assert outcome.complete == 3
    assert [t.value for t in study.trials] == pytest.approx([first, first + 0.1, first + 0.2])


def test_concurrent_launches_keep_n_jobs_trials_in_flight_without_a_batch_barrier():
    fake = FakeLauncher({0: 1.0})  # trial 0 is long, every other trial short
    study, outcome = search(fake, concurrent=True, n_trials=5, n_jobs=2)
    assert outcome.complete == 5 and [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    long_end = fake.spans[0][1]
    assert [fake.spans[t][0] < long_end for t in (1, 2, 3)] == [True] * 3  # started while trial 0 ran
    assert fake.most_active == 2  # never more than n_jobs
    assert sorted(fake.job_numbers) == list(range(5))  # Hydra job numbers (folders) stay unique
    assert [t.user_attrs["ftsweep.mlflow_run_id"] for t in study.trials] == [f"run-{i}" for i in range(5)]


def test_other_launchers_get_batches_of_n_jobs_from_this_thread():
    fake = FakeLauncher({0: 0.5})
    calls = []
    launch = fake.launch

    def recording(jobs, first):
        calls.append((len(jobs), first, threading.current_thread() is threading.main_thread()))
        return launch(jobs, first)

    fake.launch = recording
    study, outcome = search(fake, concurrent=False, n_trials=5, n_jobs=2)
    assert outcome.complete == 5 and calls == [(2, 0, True), (2, 2, True), (1, 4, True)]
    assert fake.spans[2][0] >= fake.spans[0][1]  # the second batch waits for the first


def test_a_failed_trial_stops_new_launches_and_is_named():
    """max_failure_rate=0: after trial 0 fails, trials already in flight finish, none start."""
    fake = FakeLauncher({0: 0.2, 1: 0.6}, failing=frozenset({0}))
    study, outcome = search(fake, concurrent=True, n_trials=6, n_jobs=2)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert outcome.failures == ["trial 0 (job 0): RuntimeError: trial 0 broke"]


@pytest.mark.parametrize("target, settings_, concurrent", [
    ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2}, True),
    ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 1}, False),  # runs in-thread
    ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", {}, True),
    ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", {}, True),
    ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", {}, False),
])
def test_which_launchers_take_concurrent_launches(target, settings_, concurrent):
    from hydra.utils import get_class

    cls = get_class(target)
    launcher = cls.__new__(cls)
    if "n_jobs" in settings_:
        launcher.joblib = dict(settings_)
    assert concurrent_launches(launcher) is concurrent


class TerminatedWorkerError(Exception):
    """Named as joblib's (loky's): what its launcher raises when a job's process was killed."""


def killing(fake: FakeLauncher, deaths: dict[int, int]):
    """fake.launch, except that lineage L's first deaths[L] launches raise as joblib's do after kill -9."""
    launch = fake.launch

    def launch_or_die(jobs, first):
        lineage = int(next(o for o in jobs[0] if o.startswith("search.lineage=")).split("=")[1])
        if deaths.get(lineage, 0) > 0:
            deaths[lineage] -= 1
            raise TerminatedWorkerError("A worker process managed by the executor was unexpectedly terminated. "
                                        "The exit codes of the workers are {SIGKILL(-9)}")
        return launch(jobs, first)

    fake.launch = launch_or_die


def test_a_trial_whose_process_died_runs_again_once_and_keeps_its_lineage():
    fake = FakeLauncher({})
    killing(fake, {1: 1})
    study, outcome = search(fake, concurrent=True, n_trials=4, n_jobs=2)  # max_failure_rate 0: a death is no failure
    states = {t.number: t.state for t in study.trials}
    assert outcome.complete == 4 and outcome.failed == 0 and outcome.failures == []
    assert states[1] == TrialState.FAIL and study.trials[1].user_attrs["ftsweep.interrupted"] is True
    (retry,) = [t for t in study.trials if t.user_attrs.get("ftsweep.died")]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["ftsweep.lineage"] == 1
    assert retry.params == study.trials[1].params
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 4  # the retry took the place of no new trial


def test_a_trial_whose_process_dies_twice_fails_by_name():
    fake = FakeLauncher({})
    killing(fake, {0: 2})
    study, outcome = search(fake, concurrent=True, n_trials=3, n_jobs=1)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # rate 0: nothing after
    assert [t.user_attrs["ftsweep.lineage"] for t in study.trials] == [0, 0]
    assert outcome.failures == ["trial 1 (job 1): its job's process died (SIGKILL, often the out-of-memory killer), "
                                "twice"]


def _named(name: str, text: str) -> Exception:
    return type(name, (Exception,), {})(text)


@pytest.mark.parametrize(("exc", "how", "memory"), [
    (TerminatedWorkerError("The exit codes of the workers are {SIGKILL(-9)}"),
     "died (SIGKILL, often the out-of-memory killer)", True),
    (TerminatedWorkerError("The exit codes of the workers are {SIGSEGV(-11)}"), "died (SIGSEGV)", False),
    (TerminatedWorkerError("terminated; no exit codes"), "died", False),
    (_named("UncompletedJobError", "Job 12_0 (task: 0) with path /x/12_0_result.pkl\nhas not produced any output "
                                   "(state: OUT_OF_MEMORY)\nError stream produced:\nCaught signal SIGTERM (-1)"),
     "ended without a result (state: OUT_OF_MEMORY)", True),
    (_named("UncompletedJobError", "has not produced any output (state: TIMEOUT)\nBypassing signal SIGKILL"),
     "ended without a result (state: TIMEOUT)", False),
    (_named("UncompletedJobError", "has not produced any output (state: CANCELLED by 0)\nNo output/error stream"),
     "ended without a result (state: CANCELLED by 0)", False),  # sacct names who ran scancel
    (_named("UncompletedJobError", "has not produced any output (state: UNKNOWN)"),
     "ended without a result (state: UNKNOWN)", False),
    (_named("UncompletedJobError", "has not produced any output"), "ended without a result", False),
])
def test_which_errors_mean_a_job_process_died(exc, how, memory):
    from ftsweep.sweep.launchers import Death, worker_died

    assert worker_died(exc) == Death(how, memory)
    try:  # found through the chain, as a launcher re-raises it
        raise RuntimeError("launch failed") from exc
    except RuntimeError as wrapper:
        assert worker_died(wrapper) == Death(how, memory)


def test_a_worker_ended_by_ctrl_c_is_an_interruption_not_a_crash():
    from ftsweep.sweep.launchers import Death, worker_died

    assert worker_died(TerminatedWorkerError("The exit codes of the workers are {SIGINT(-2)}")) == Death(
        "died (SIGINT)", memory=False, interrupted=True)
    assert not worker_died(TerminatedWorkerError("The exit codes of the workers are {SIGTERM(-15)}")).interrupted


@pytest.mark.parametrize("exc", [
    RuntimeError("wrapped"),
    ValueError("SIGKILL in a message is not a dead worker"),
    _named("BrokenProcessPool", "A task has failed to un-serialize"),  # loky's pickling error: no process died
    _named("FailedJobError", "the job raised"),  # submitit: the job's own exception, not a death
])
def test_other_errors_are_not_a_dead_process(exc):
    from ftsweep.sweep.launchers import worker_died

    assert worker_died(exc) is None


def _died_once_then(study: optuna.Study, state: TrialState) -> None:
    """A trial whose job died (retry_died FAILs it and queues it again, same lineage), then its retry."""
    from ftsweep.search.study import own, retry_died

    trial = study.ask({"x": CategoricalDistribution([1, 2])})
    own(trial)
    assert retry_died(study, trial)
    retry = study.ask({"x": CategoricalDistribution([1, 2])})
    own(retry)
    study.tell(retry, 0.5 if state == TrialState.COMPLETE else None, state=state)


def test_a_retried_trial_counts_once_in_the_state_of_its_retry(capsys, tmp_path):
    """A search whose job died once and whose retry completed said '1 complete, ... 1 failed' at exit 0."""
    from types import SimpleNamespace

    from ftsweep.search.study import lineage_counts
    from ftsweep.search.summary import summarize

    study = optuna.create_study()
    _died_once_then(study, TrialState.COMPLETE)
    counts, retried = lineage_counts(study.get_trials())
    assert (counts[TrialState.COMPLETE], counts[TrialState.FAIL], retried) == (1, 0, 1)

    study = optuna.create_study(study_name="s")
    _died_once_then(study, TrialState.PRUNED)
    study.tell(study.ask({"x": CategoricalDistribution([1, 2])}), state=TrialState.FAIL)  # a trial that failed
    summarize(study, None, SimpleNamespace(storage="sqlite:///optuna.db"), None, None, tmp_path)
    assert capsys.readouterr().out.strip().splitlines()[0] == (
        "Search 's': 0 complete, 1 pruned, 1 failed trial(s) (1 attempt(s) cut short and retried); storage "
        "sqlite:///optuna.db")
