"""A search, end to end: the space and every setting checked before the first trial (the space's
keys and the values at its bounds composed and validated like a run, the settings, the storage,
the data), the study opened and bound to its data, the trials run (loop.py), the summary written
(summary.py), failed trials named at the end."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import optuna
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from ftsweep.config.command_line import compose_or_explain
from ftsweep.errors import FtsweepError, exit_with
from ftsweep.search.loop import Launcher, Outcome, run_trials
from ftsweep.search.settings import Settings, check_pruner, extension, make_sampler, pruner_rule, searched
from ftsweep.search.space import SearchSpace, bounds_and_choices, format_value, parse
from ftsweep.search.study import bind, note_pruner, open_storage, open_study

log = logging.getLogger("ftsweep")


# Groups whose keys change which rows a trial reads or how they are split into folds: trials scored on
# other rows cannot be ranked against each other, nor paired row by row (the paired pruner, the table).
ROW_GROUPS = ("data", "cv")
# eval=frequent (every 10 batches) against eval=epoch on the demo: benchmarks/RESULTS.md#selection-optimism
SELECTION_OPTIMISM = ("measured on the demo: 0.0001 RMSE, MiniLM's best checkpoints against its last weights over "
                      "5 folds; more where the validation curve is noisy")


def check_rows_fixed(searched_keys: list[str]) -> None:
    """One dataset and one fold assignment per study: searching a key that moves the rows is refused."""
    moving = [key for key in searched_keys if key.lstrip("+~").split(".")[0].split("/")[0] in ROW_GROUPS]
    if moving:
        raise FtsweepError(f"the search space includes {', '.join(moving)}: trials would be scored on other rows or "
                           f"other folds and could not be compared; run one study per dataset and fold assignment "
                           f"(set {moving[0].lstrip('+~')}=VALUE as a fixed override, once per value).")


def warn_selection(searched_keys: list[str], objective: str) -> None:
    """Under rmse_best a fold scores its best evaluation on its own validation rows: evaluating more
    often wins by selection alone (measured on the demo: benchmarks/RESULTS.md#selection-optimism)."""
    cadence = [key for key in searched_keys if key.lstrip("+~").split(".")[0].split("/")[0] == "eval"]
    if cadence and objective == "rmse_best":
        log.warning("search: %s is searched under hydra.sweeper.objective=rmse_best, the best of each fold's "
                    "evaluations on its own validation rows, so evaluating more often wins by selection alone "
                    "(%s on the demo); hydra.sweeper.objective=rmse_last scores the final weights instead.",
                    ", ".join(cadence), SELECTION_OPTIMISM)


def build_space(arguments: list[str], params: dict, compose: Composer) -> tuple[SearchSpace, DictConfig]:
    """The space, with every key and the values at its bounds composed and validated as a run
    would be; and the config every trial shares (the fixed overrides applied)."""
    from ftsweep.cv.pipeline import check_config

    probe = parse(arguments, params)  # key names first, then which of them hold ints
    check_rows_fixed(list(probe.params))
    shared = compose(probe.fixed)
    int_keys = {key for key in probe.params if _is_int(OmegaConf.select(shared, key, default=None))}
    space = parse(arguments, params, int_keys)
    check_config(shared)
    for key, dist in space.params.items():
        for value in bounds_and_choices(dist):
            job = compose.extended(shared, space.fixed, space.overrides({key: value})[len(space.fixed):])
            try:
                check_config(job)
            except FtsweepError as exc:  # the value may be a preset's bound the user never typed
                raise type(exc)(f"the search space of {key} (the command line's, or the preset's "
                                f"hydra.sweeper.params) reaches {key}={format_value(value)}: {exc} Narrow it "
                                f"on the command line.") from None
    return space, shared


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Composer:
    """A job's config from its overrides, as the launcher will compose it (`keep_hydra`: with the
    hydra node, whose runtime.choices say which config group options were taken)."""

    def __init__(self, config_loader, sweep_config: DictConfig) -> None:
        self._loader, self._sweep_config = config_loader, sweep_config
        self._parser = OverridesParser.create()

    def __call__(self, overrides: list[str], keep_hydra: bool = False) -> DictConfig:
        cfg = compose_or_explain(lambda these: self._loader.load_sweep_config(self._sweep_config, these), self._loader,
                                 list(overrides), list(overrides))
        if not keep_hydra:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg

    def extended(self, base: DictConfig, base_overrides: list[str], more: list[str]) -> DictConfig:
        """What composing `base_overrides + more` gives, where `base` is `base_overrides` composed.
        Hydra merges the config groups' files first and then applies every override that names
        no config group to the merged config, in order; so where `more` are all such value
        overrides, applying them to a copy of `base` is that compose, without reading every file
        again (a search checks each bound of its space: composing took 0.2 s apiece). Anything
        else, or an override Hydra would refuse, is composed whole (and explained there): a group
        found only on a command line's hydra.searchpath, or a hydra.* key (not in `base`), too."""
        try:
            parsed = self._parser.parse_overrides(list(more))
            if self._sweep_config.hydra.get("searchpath") or any(
                    o.key_or_group.split(".")[0] == "hydra" or (self._loader.repository.group_exists(o.key_or_group)
                                                               and not isinstance(o.value(), dict)) for o in parsed):
                return self(base_overrides + more)
            cfg = copy.deepcopy(base)
            ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
            return cfg
        except Exception:  # noqa: BLE001 (composing whole gives the one line that explains it)
            return self(base_overrides + more)


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

    compose = Composer(config_loader, config)
    try:
        space, shared = build_space(arguments, searched(sweeper), compose)
        settings = Settings.read(sweeper, shared, default_study)
        warn_selection(list(space.params), settings.objective)
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
    if outcome.out_of_time:
        print(f"The budget ended the search: hydra.sweeper.timeout={settings.timeout:g} s had passed, so no trial "
              f"started after it ({outcome.told} told this run). Rerun the same command to go on with the study.")
    if outcome.failed:
        report_failures(outcome)
    return outcome
