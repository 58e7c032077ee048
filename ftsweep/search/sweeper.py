"""A search: ask the study for trials, keep `n_jobs` of them in flight as Hydra jobs through
whatever launcher the sweep uses (a trial that ends makes room for the next; no batch waits
for its slowest trial), tell the study how each ended, until `n_trials` trials are complete
or pruned (counted over every run of the same command).

Everything a user can get wrong is checked before the first trial: the space, each key and
the values at its bounds (composed and validated like a run), the settings, the storage.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState

from ftsweep.config.command_line import compose_or_explain
from ftsweep.config.rules import SEED_MAX, Range, show
from ftsweep.errors import FtsweepError, exit_with
from ftsweep.hydra_job import JOB_STATUS
from ftsweep.locks import Heartbeat, beat
from ftsweep.search.paired import SettingError, build_pruner
from ftsweep.search.space import SearchSpace, bounds_and_choices, format_value, parse
from ftsweep.search.study import (
    bind,
    default_storage,
    in_progress,
    lineage,
    note_pruner,
    open_storage,
    open_study,
    own,
    retry_died,
    retry_interrupted,
)
from ftsweep.sweep.launchers import worker_died
from ftsweep.tags import HEARTBEAT_TAG, OVERRIDES_TAG, RUN_ID_ATTR
from ftsweep.tracking.store import normalize_uri

log = logging.getLogger("ftsweep")
Compose = Callable[[list[str]], DictConfig]  # overrides -> the job's config (hydra node removed)
Launch = Callable[[list[list[str]], int], Sequence[JobReturn]]


@dataclass
class Settings:
    """hydra.sweeper's keys (hydra-optuna-sweeper's names), checked."""

    direction: str
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    study_name: str
    storage: str
    sampler: DictConfig | optuna.samplers.BaseSampler | None
    custom_search_space: str | None
    top: int

    @classmethod
    def read(cls, sweeper: DictConfig, job_cfg: DictConfig, default_study: str) -> Settings:
        get = sweeper.get
        direction = get("direction") or "minimize"
        if not isinstance(direction, str):
            directions = list(direction)
            if len(directions) != 1:
                raise FtsweepError(f"hydra.sweeper.direction={directions}: ftsweep optimises one value, the CV RMSE.")
            direction = directions[0]
        direction = str(direction).lower()
        if direction != "minimize":
            raise FtsweepError(f"hydra.sweeper.direction={direction}: the objective is the CV RMSE, lower is "
                               f"better; use direction=minimize.")
        n_trials, n_jobs = _positive_int("n_trials", get("n_trials")), _positive_int("n_jobs", get("n_jobs", 1))
        rate = get("max_failure_rate", 0.0)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= float(rate) <= 1.0:
            raise FtsweepError(f"hydra.sweeper.max_failure_rate={rate!r} must be a number from 0 to 1.")
        tracking = normalize_uri(str(job_cfg.tracking.uri))
        storage = get("storage") or default_storage(tracking, str(job_cfg.paths.output_root))
        if not isinstance(storage, str):
            raise FtsweepError(f"hydra.sweeper.storage={storage!r} must be a database URL: sqlite:///path/optuna.db "
                               f"or postgresql+psycopg2://user@host/db.")
        if storage.split("?")[0].rstrip("/") in ("sqlite:", "sqlite://") or ":memory:" in storage:
            raise FtsweepError(f"hydra.sweeper.storage={storage}: an in-memory database is not seen by the trials' "
                               f"jobs; give a file, sqlite:///path/optuna.db.")
        name = get("study_name")
        if name is not None and (not isinstance(name, (str, int)) or isinstance(name, bool)
                                 or not str(name).strip() or len(str(name)) > 500):
            raise FtsweepError(f"hydra.sweeper.study_name={name!r} must be a name of 1 to 500 characters (or "
                               f"null: the sweep's experiment name).")
        top = _positive_int("top", get("top", 10))
        return cls(direction, n_trials, n_jobs, float(rate), str(name or default_study), storage,
                   get("sampler"), get("custom_search_space"), top)


def _positive_int(key: str, value) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # 1e3 is Hydra's float
    if isinstance(value, bool) or not whole or value < 1:
        raise FtsweepError(f"hydra.sweeper.{key}={value!r} must be a whole number >= 1.")
    return int(value)


def searched(sweeper: DictConfig) -> dict:
    """hydra.sweeper.params (and search_space, its old name)."""
    return dict(sweeper.get("search_space") or {}, **(sweeper.get("params") or {}))


def build_space(arguments: list[str], params: dict, compose: Compose) -> tuple[SearchSpace, DictConfig]:
    """The space, with every key and the values at its bounds composed and validated as a run
    would be; and the config every trial shares (the fixed overrides applied)."""
    from ftsweep.cv.pipeline import check_config

    probe = parse(arguments, params)  # key names first, then which of them hold ints
    shared = compose(probe.fixed)
    int_keys = {key for key in probe.params if _is_int(OmegaConf.select(shared, key, default=None))}
    space = parse(arguments, params, int_keys)
    check_config(shared)
    for key, dist in space.params.items():
        for value in bounds_and_choices(dist):
            job = compose([*space.fixed, *space.overrides({key: value})[len(space.fixed):]])
            try:
                check_config(job)
            except FtsweepError as exc:  # the value may be a preset's bound the user never typed
                raise type(exc)(f"the search space of {key} (the command line's, or the preset's "
                                f"hydra.sweeper.params) reaches {key}={format_value(value)}: {exc} Narrow it "
                                f"on the command line.") from None
    return space, shared


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def composer(config_loader, sweep_config: DictConfig) -> Compose:
    """A job's config from its overrides, as the launcher will compose it (`keep_hydra`: with
    the hydra node, whose runtime.choices say which config group options were taken)."""
    def compose(overrides: list[str], keep_hydra: bool = False) -> DictConfig:
        cfg = compose_or_explain(lambda these: config_loader.load_sweep_config(sweep_config, these), config_loader,
                                 list(overrides), list(overrides))
        if not keep_hydra:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg

    return compose


def make_sampler(spec, existing_trials: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler restarted on a study with trials would propose its first trials again:
    its seed moves on by the trials already there (reruns stay reproducible)."""
    if spec is None:
        return optuna.samplers.TPESampler()
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    spec = OmegaConf.create(OmegaConf.to_container(spec, resolve=True)) if not isinstance(spec, DictConfig) else spec
    seed = spec.get("seed")
    _check_number("sampler.seed", seed, Range(integer=True, low=0, high=SEED_MAX, nullable=True))
    if existing_trials and seed is not None:
        spec = OmegaConf.merge(spec, {"seed": (seed + existing_trials) % (SEED_MAX + 1)})
    try:
        with warnings.catch_warnings():  # Optuna's "experimental" warning (QMC, GP) is noise here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = instantiate(spec)
    except Exception as exc:  # noqa: BLE001 (a bad _target_ or argument: one line)
        raise FtsweepError(f"hydra.sweeper.sampler: {_one_line(exc)}") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise FtsweepError(f"hydra.sweeper.sampler._target_ must be an Optuna sampler, not {type(sampler).__name__}.")
    return sampler


_WARM_UP = ("n_warmup_steps", "n_startup_steps")  # steps are folds: a pruner waits this many
_PRUNER_CHOICES = "paired, median, wilcoxon, hyperband, threshold or none"


def check_pruner(spec, n_folds: int | None = None) -> None:
    """The pruner each job builds (ftsweep.pruning), built once here so a typo fails before any
    trial; and settings that build but cannot work (a warm-up past the last fold never prunes)."""
    if spec is None:
        return
    if not isinstance(spec, (DictConfig, dict)):
        raise FtsweepError(f"hydra.sweeper.pruner={spec!r} is not a pruner's settings: choose one with "
                           f"hydra/sweeper/pruner=NAME ({_PRUNER_CHOICES}), then set its keys as "
                           f"hydra.sweeper.pruner.KEY=VALUE.")
    try:
        pruner = build_pruner(spec)
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else None  # Hydra wraps the reason
        if isinstance(cause, SettingError):
            raise FtsweepError(f"hydra.sweeper.pruner.{cause}.") from None  # its messages start with the key
        raise FtsweepError(f"hydra.sweeper.pruner: {_one_line(cause or exc)}") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise FtsweepError(f"hydra.sweeper.pruner._target_ must be an Optuna pruner, not {type(pruner).__name__}.")
    get = spec.get
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        for key, low in (("min_resource", 1), ("reduction_factor", 2)):
            if key in spec and get(key) != "auto":
                _check_number(f"pruner.{key}", get(key), Range(integer=True, low=low))
    if isinstance(pruner, optuna.pruners.ThresholdPruner):
        for key in ("lower", "upper"):
            _check_number(f"pruner.{key}", get(key), Range(nullable=True), "a number (or null: no bound)")
    for key in _WARM_UP:
        value = get(key)
        if n_folds is not None and isinstance(value, int) and not isinstance(value, bool) and value >= n_folds:
            raise FtsweepError(f"hydra.sweeper.pruner.{key}={value} but a trial runs {n_folds} folds (steps 0.."
                               f"{n_folds - 1}): this pruner could never stop a trial; use 0..{n_folds - 1}, or "
                               f"hydra/sweeper/pruner=none.")


def _check_number(key: str, value, rule: Range, want: str | None = None) -> None:
    if not (value is None and rule.nullable) and not rule.admits(value):
        raise FtsweepError(f"hydra.sweeper.{key}={show(value)} must be {want or rule.describe()}.")


def pruner_rule(spec, choice: str | None) -> str:
    """The pruning rule as the command chose it, e.g. `paired(alpha=0.05, min_delta=0.01, ...)`."""
    if spec is None:
        return "none"
    node = dict(OmegaConf.to_container(spec, resolve=True)) if isinstance(spec, DictConfig) else dict(spec)
    name = choice or str(node.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}({', '.join(f'{key}={value}' for key, value in sorted(node.items()) if key != '_target_')})"


def _one_line(exc: Exception) -> str:
    """Hydra's instantiate error in one line: "Error in call to target 'x':" is followed by the reason."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]


def extension(path: str) -> Callable:
    """hydra.sweeper.custom_search_space's function (Hydra's get_method would log three lines of its
    own, and its message drops the reason)."""
    module, _, name = str(path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except Exception as exc:  # noqa: BLE001 (ImportError, AttributeError, the module's own errors: one line)
        reason = str(exc).strip().splitlines()
        found, why = None, f"{type(exc).__name__}: {reason[0][:200]}" if reason else type(exc).__name__
    else:
        why = "not a function" if module else "not a dotted path"
    if not callable(found):
        raise FtsweepError(f"hydra.sweeper.custom_search_space={path!r}: {why}; give module.function(cfg, trial), "
                           f"importable from where you run the command.")
    return found


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


def run_trials(study: optuna.Study, space: SearchSpace, settings: Settings, launcher: Launcher,
               full_config: DictConfig, first_job: int = 0) -> Outcome:
    _warn_other_space(study, space)
    retry_interrupted(study)
    extend = extension(settings.custom_search_space) if settings.custom_search_space else None
    outcome, numbers = Outcome(), itertools.count(first_job)
    per_launch, slots = (1, settings.n_jobs) if launcher.concurrent else (settings.n_jobs, 1)
    in_flight: dict[Future, list[tuple[optuna.trial.Trial, int]]] = {}
    launched, stopping = 0, False  # failed trials do not count toward n_trials: this run launches n_trials at most

    def renew() -> None:  # the in-flight trials' heartbeat (what retry_interrupted checks elsewhere)
        for batch in list(in_flight.values()):
            for trial, _ in batch:
                trial.set_user_attr(HEARTBEAT_TAG, beat())

    pool = ThreadPoolExecutor(slots, thread_name_prefix="ftsweep-trial") if launcher.concurrent else _Inline()
    try:
        with Heartbeat(renew):
            while True:
                while not stopping and len(in_flight) < slots and (remaining := min(
                        settings.n_trials - in_progress(study), settings.n_trials - launched)) > 0:
                    batch = [_ask(study, space, extend, full_config) for _ in range(min(per_launch, remaining))]
                    jobs = [[*space.overrides(t.params), *_trial_overrides(settings, t)] for t in batch]
                    for trial, job_overrides in zip(batch, jobs, strict=True):  # what best.yaml rebuilds
                        trial.set_user_attr(OVERRIDES_TAG, [o for o in job_overrides if not o.startswith("search.")])
                    numbered = [(trial, next(numbers)) for trial in batch]
                    launched += len(batch)
                    log.info("search: trial(s) %s of %d", [t.number for t in batch], settings.n_trials)
                    future = pool.submit(launcher.launch, jobs, numbered[0][1])
                    in_flight[future] = numbered
                if not in_flight:
                    break
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in done:
                    numbered = in_flight.pop(future)
                    try:
                        returns = future.result()
                    except Exception as exc:  # a job process that died under joblib/submitit
                        death = worker_died(exc)
                        if death is None:
                            raise
                        for trial, job in numbered:
                            if retry_died(study, trial):  # runs again, in place of a new trial
                                launched -= 1
                                log.warning("search: trial %d (job %d): its job's process %s; it runs again and "
                                            "keeps its finished folds", trial.number, job, death.how)
                            else:
                                _fail(study, trial, outcome, job, f"its job's process {death.how}, twice")
                        continue
                    for (trial, job), ret in zip(numbered, returns, strict=True):
                        _tell(study, trial, ret, outcome, job)
                if not stopping and outcome.failed and outcome.failed / outcome.told > settings.max_failure_rate:
                    log.error("search: %d of %d trial(s) failed (hydra.sweeper.max_failure_rate=%s): no new "
                              "trials%s", outcome.failed, outcome.told, settings.max_failure_rate,
                              "; waiting for the running ones" if in_flight else "")
                    stopping = True
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


def _tell(study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn, outcome: Outcome, job: int) -> None:
    value = ret._return_value if ret.status == JobStatus.COMPLETED else None
    if isinstance(value, dict) and value.get("run_id"):  # the trial -> MLflow run link (the run has study/trial tags)
        trial.set_user_attr(RUN_ID_ATTR, str(value["run_id"]))
    if isinstance(value, dict) and value.get("pruned_at") is not None:
        study.tell(trial, state=TrialState.PRUNED)
        outcome.pruned += 1
    elif isinstance(value, dict) and isinstance(value.get("value"), float) and math.isfinite(value["value"]):
        study.tell(trial, value["value"])
        outcome.complete += 1
    else:  # the job failed or was held: its reason, for the closing error
        _fail(study, trial, outcome, job, _failure(ret, value))


def _fail(study: optuna.Study, trial: optuna.trial.Trial, outcome: Outcome, job: int, why: str) -> None:
    study.tell(trial, state=TrialState.FAIL)
    outcome.failed += 1
    outcome.failures.append(f"trial {trial.number} (job {job}): {why}")


def _failure(ret: JobReturn, value) -> str:
    """Why a trial's job gave no result: its exception, or what the job recorded in its folder."""
    if ret.status == JobStatus.FAILED:
        exc, text = ret._return_value, str(ret._return_value).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
    if isinstance(value, dict) and value.get("held"):
        return "skipped: another live process is running this config; rerun when it has finished"
    try:
        folder = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        recorded = json.loads((folder / JOB_STATUS).read_text())
    except (AttributeError, OSError, ValueError):
        recorded = {}
    return str(recorded.get("detail") or "the job returned no finite mean CV RMSE")


def report_failures(outcome: Outcome) -> None:
    """Like a failed grid sweep: the failed trials, one line each, and exit 1."""
    lines = "\n".join(f"  {line}" for line in outcome.failures)
    exit_with(f"{outcome.failed} of {outcome.told} trial(s) of this run failed; fix what they say and rerun the "
              f"same command: the study goes on, failed trials are not counted:\n{lines}", 1)


def open_search(settings: Settings) -> optuna.Study:
    storage = open_storage(settings.storage)
    known = settings.study_name in optuna.study.get_all_study_names(storage)
    existing = optuna.load_study(study_name=settings.study_name, storage=storage) if known else None
    sampler = make_sampler(settings.sampler, len(existing.trials) if existing is not None else 0)
    return open_study(settings.study_name, storage, settings.direction, sampler=sampler)


def search(sweeper: DictConfig, arguments: list[str], config: DictConfig, config_loader, launcher: Launcher,
           default_study: str) -> Outcome:
    """The whole search; a setting, key or value that cannot work is one line and exit 2 here;
    failed trials are listed at the end, exit 1."""
    from ftsweep.cv.pipeline import load_data
    from ftsweep.data.folds import folds_to_run
    from ftsweep.search.summary import summarize

    compose = composer(config_loader, config)
    try:
        space, shared = build_space(arguments, searched(sweeper), compose)
        settings = Settings.read(sweeper, shared, default_study)
        check_pruner(sweeper.get("pruner"), len(folds_to_run(shared)))
        if settings.custom_search_space:
            extension(settings.custom_search_space)
        rows = load_data(shared).fingerprint  # bad data stops here, before any trial
        study = open_search(settings)
        bind(study, settings.storage, rows, space.fixed)
        note_pruner(study, pruner_rule(sweeper.get("pruner"), config.hydra.runtime.choices.get("hydra/sweeper/pruner")))
        outcome = run_trials(study, space, settings, launcher, config)
    except FtsweepError as exc:
        exit_with(exc)
    summarize(study, space, settings, shared, compose, Path(config.hydra.sweep.dir) / "search")
    if outcome.failed:
        report_failures(outcome)
    return outcome
