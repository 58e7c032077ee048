"""The search loop: ask the study for trials, keep `n_jobs` of them in flight as Hydra jobs through
whatever launcher the sweep uses (a trial that ends makes room for the next; no batch waits for its
slowest trial), and tell the study how each ended (from its job's TrialReport), until `n_trials`
trials are complete or pruned (counted over every run of the same command)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig
from optuna.trial import TrialState

from ftsweep.cv.job import TrialReport
from ftsweep.errors import FtsweepError
from ftsweep.hydra_job import JOB_STATUS
from ftsweep.locks import Heartbeat, beat
from ftsweep.search.settings import Settings, extension
from ftsweep.search.space import SearchSpace, format_value
from ftsweep.search.study import in_progress, lineage, own, retry_died, retry_interrupted
from ftsweep.sweep.launchers import worker_died
from ftsweep.tags import HEARTBEAT_TAG, OVERRIDES_TAG, RUN_ID_ATTR

log = logging.getLogger("ftsweep")
clock = time.monotonic  # the search's budget is measured by it (tests replace it rather than wait)
Launch = Callable[[list[list[str]], int], Sequence[JobReturn]]


@dataclass
class Launcher:
    """How trials reach Hydra's launcher. `launch(jobs, first_job_number)` blocks until those jobs
    end. With `concurrent` (joblib's loky workers, submitit), calls from several threads at once
    are safe: n_jobs single-trial launches stay in flight, and a trial that ends (complete, pruned
    or failed) makes room for the next at once. Otherwise (the basic launcher runs jobs in this
    process) n_jobs trials are launched as one batch, from this thread."""

    launch: Launch
    concurrent: bool = False


@dataclass
class Outcome:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # "trial N (job J): why", for the closing error
    out_of_time: bool = False  # hydra.sweeper.timeout passed: no trial started after it

    @property
    def told(self) -> int:
        return self.complete + self.pruned + self.failed


class _Inline:
    """An executor that runs each launch at once in this thread (the basic launcher's jobs run in
    this process: Hydra's globals and signal handlers want the main thread)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


Numbered = list[tuple[optuna.trial.Trial, int]]  # a launch's trials, each with its Hydra job number


@dataclass
class _Flight:
    """The trials launched and not yet told, and how many this run has launched: failed trials do
    not count toward n_trials, so this run launches n_trials at most."""

    per_launch: int  # trials per launch(): 1 where launches run concurrently, else n_jobs in one batch
    slots: int  # launches in flight at once
    objective: str  # what the study is told (hydra.sweeper.objective)
    in_flight: dict[Future, Numbered] = field(default_factory=dict)
    launched: int = 0
    stopping: bool = False  # too many failures: no new trials, the running ones finish

    def renew(self) -> None:
        """The in-flight trials' heartbeat (what retry_interrupted checks in another run)."""
        for batch in list(self.in_flight.values()):
            for trial, _ in batch:
                trial.set_user_attr(HEARTBEAT_TAG, beat())


def run_trials(study: optuna.Study, space: SearchSpace, settings: Settings, launcher: Launcher,
               full_config: DictConfig, first_job: int = 0) -> Outcome:
    _warn_other_space(study, space)
    retry_interrupted(study)
    extend = extension(settings.custom_search_space) if settings.custom_search_space else None
    outcome, numbers = Outcome(), itertools.count(first_job)
    flight = _Flight(*((1, settings.n_jobs) if launcher.concurrent else (settings.n_jobs, 1)), settings.objective)
    started = clock()
    pool = ThreadPoolExecutor(flight.slots, thread_name_prefix="ftsweep-trial") if launcher.concurrent else _Inline()
    try:
        with Heartbeat(flight.renew):
            while True:
                while not flight.stopping and len(flight.in_flight) < flight.slots and (remaining := min(
                        settings.n_trials - in_progress(study), settings.n_trials - flight.launched)) > 0:
                    if _out_of_time(settings, started):
                        outcome.out_of_time = flight.stopping = True
                        break
                    batch = [_ask(study, space, extend, full_config) for _ in range(min(flight.per_launch, remaining))]
                    _launch(batch, space, settings, launcher, pool, flight, numbers)
                if not flight.in_flight:
                    break
                done, _ = wait(list(flight.in_flight), return_when=FIRST_COMPLETED)
                for future in done:
                    _ended(study, flight, future, outcome)
                _stop_on_failures(settings, flight, outcome)
    except KeyboardInterrupt:
        if launcher.concurrent:
            # The trial threads would wait for their jobs to end. Leave instead: each worker sees its
            # driver gone, marks its runs KILLED and exits (ftsweep.jobs' orphan watch).
            print("ftsweep: interrupted; the running trials are retried by the next run of this command (their "
                  "finished folds are kept).", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        raise
    finally:
        if launcher.concurrent:
            pool.shutdown(wait=False)
    return outcome


def _launch(batch: list[optuna.trial.Trial], space: SearchSpace, settings: Settings, launcher: Launcher, pool,
            flight: _Flight, numbers: itertools.count) -> None:
    jobs = [[*space.overrides(t.params), *_trial_overrides(settings, t)] for t in batch]
    for trial, job_overrides in zip(batch, jobs, strict=True):  # what best.yaml rebuilds
        trial.set_user_attr(OVERRIDES_TAG, [o for o in job_overrides if not o.startswith("search.")])
    numbered = [(trial, next(numbers)) for trial in batch]
    flight.launched += len(batch)
    log.info("search: trial(s) %s of %d", [t.number for t in batch], settings.n_trials)
    flight.in_flight[pool.submit(launcher.launch, jobs, numbered[0][1])] = numbered


def _ended(study: optuna.Study, flight: _Flight, future: Future, outcome: Outcome) -> None:
    """Tell the study how a launch's trials ended; a job whose process died runs its trial again, once."""
    numbered = flight.in_flight.pop(future)
    try:
        returns = future.result()
    except Exception as exc:  # a job process that died under joblib/submitit
        death = worker_died(exc)
        if death is None:
            raise
        for trial, job in numbered:
            if retry_died(study, trial):  # runs again, in place of a new trial
                flight.launched -= 1
                log.warning("search: trial %d (job %d): its job's process %s; it runs again and keeps its "
                            "finished folds", trial.number, job, death.how)
            else:
                _fail(study, trial, outcome, job, f"its job's process {death.how}, twice")
        return
    for (trial, job), ret in zip(numbered, returns, strict=True):
        _tell(study, trial, ret, outcome, job, flight.objective)


def _out_of_time(settings: Settings, started: float) -> bool:
    if settings.timeout is not None and clock() - started >= settings.timeout:
        log.info("search: hydra.sweeper.timeout=%g s has passed: no new trials; the running ones finish",
                 settings.timeout)
        return True
    return False


def _stop_on_failures(settings: Settings, flight: _Flight, outcome: Outcome) -> None:
    if not flight.stopping and outcome.failed and outcome.failed / outcome.told > settings.max_failure_rate:
        log.error("search: %d of %d trial(s) failed (hydra.sweeper.max_failure_rate=%s): no new trials%s",
                  outcome.failed, outcome.told, settings.max_failure_rate,
                  "; waiting for the running ones" if flight.in_flight else "")
        flight.stopping = True


def _ask(study: optuna.Study, space: SearchSpace, extend, full_config: DictConfig) -> optuna.trial.Trial:
    try:
        trial = study.ask(dict(space.params))
    except ValueError as exc:  # e.g. a key searched as a choice where the study has it as a range
        raise FtsweepError(f"study {study.study_name!r} cannot take this search space: {exc}; set "
                           f"hydra.sweeper.study_name for a study of its own.") from None
    if extend is not None:
        extend(full_config, trial)  # hydra-optuna-sweeper's custom_search_space(cfg, trial)
    own(trial)
    return trial


def _warn_other_space(study: optuna.Study, space: SearchSpace) -> None:
    """Narrowing an interval between runs is fine; searching other keys in the same study mixes two searches."""
    before = {key for t in study.get_trials(deepcopy=False) for key in t.distributions}
    if before and set(space.params) - before:
        log.warning("search: study %r already has trials over %s; this run searches %s. Set "
                    "hydra.sweeper.study_name for a study of its own.", study.study_name, sorted(before),
                    sorted(space.params))


def _trial_overrides(settings: Settings, trial: optuna.trial.Trial) -> list[str]:
    """Where the job reports its folds (ftsweep.pruning) and which MLflow run is the trial's."""
    return [f"search.study={format_value(settings.study_name)}", f"search.storage={format_value(settings.storage)}",
            f"search.trial_id={trial._trial_id}", f"search.lineage={lineage(trial)}"]


def _tell(study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn, outcome: Outcome, job: int,
          objective: str) -> None:
    returned = ret._return_value if ret.status == JobStatus.COMPLETED else None
    report = returned if isinstance(returned, TrialReport) else None
    if report is not None and report.run_id:  # the trial -> MLflow run link (the run has study/trial tags)
        trial.set_user_attr(RUN_ID_ATTR, str(report.run_id))
    if report is not None and report.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        outcome.pruned += 1
    elif report is not None and math.isfinite(value := float(report.scores.get(objective, math.nan))):
        study.tell(trial, value)
        outcome.complete += 1
    else:  # the job failed or was held: its reason, for the closing error
        _fail(study, trial, outcome, job, _failure(ret, report))


def _fail(study: optuna.Study, trial: optuna.trial.Trial, outcome: Outcome, job: int, why: str) -> None:
    study.tell(trial, state=TrialState.FAIL)
    outcome.failed += 1
    outcome.failures.append(f"trial {trial.number} (job {job}): {why}")


def _failure(ret: JobReturn, report: TrialReport | None) -> str:
    """Why a trial's job gave no result: its exception, or what the job recorded in its folder."""
    if ret.status == JobStatus.FAILED:
        exc, text = ret._return_value, str(ret._return_value).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
    if report is not None and report.held:
        return "skipped: another live process is running this config; rerun when it has finished"
    try:
        folder = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        recorded = json.loads((folder / JOB_STATUS).read_text())
    except (AttributeError, OSError, ValueError):
        recorded = {}
    return str(recorded.get("detail") or "the job returned no finite mean CV RMSE")
