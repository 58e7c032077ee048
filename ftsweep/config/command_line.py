"""The command line, checked before Hydra starts: an override it cannot read, a key or
config group option that does not exist, a sweep without -m, the Optuna sweeper without
Optuna. Hydra prints each in several lines (or a traceback) and exits 1; here each is one
line naming what was typed and the closest valid key or option (exit 2 in jobs.py).

The config is composed once up front with Hydra's own loader (~0.2 s): the same errors
Hydra would raise, with what the user typed at hand to explain them. For a multirun, each
sweep stands for its first value (an interval for its lower bound), and a sweep over a
config group's options is composed once per option, since a key may exist in only some.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig

from ftsweep.config.checks import check_cv, check_experiment
from ftsweep.config.keys import CONF_DIR
from ftsweep.config.rules import Range, show
from ftsweep.errors import ConfigError

Compose = Callable[[list[str]], DictConfig]  # overrides -> the config, with its hydra node
LIST_KEYS_AT = 10  # a group of at most this many keys is listed when no key is close to a typo


def unreadable_override(text: str, exc: Exception) -> str:
    """Hydra's parse error in one line: its reason, not its 'Error parsing override' header."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error parsing") else lines[0]
    if "integer string conversion" in reason:  # Python's own limit, not the user's to raise
        reason = "a whole number of over 4,300 digits"
    shown = text if len(text) <= 200 else f"{text[:100]}…{text[-20:]}"
    return (f"cannot read the override {shown!r}: {reason} (Hydra's override grammar: "
            f"https://hydra.cc/docs/advanced/override_grammar/basic/)")


def check(argv: list[str], config_name: str) -> None:
    """Raise ConfigError for the first thing on the command line that Hydra would refuse."""
    from hydra._internal.utils import get_args_parser


    args, _ = get_args_parser().parse_known_args(argv)
    texts = list(args.overrides or [])
    plain = OverridesParser.create()
    for text in texts:
        try:
            plain.parse_overrides([text])
        except (HydraException, ValueError) as exc:  # ValueError: an integer of over 4,300 digits
            raise ConfigError(unreadable_override(text, exc)) from None
    if args.help or args.hydra_help or args.shell_completion or args.info or args.config_path is not None:
        return  # Hydra's own screens, or another primary config folder: Hydra reports those itself
    loader = _loader(args.config_dir)
    name = args.config_name or config_name

    def compose(overrides: list[str]) -> DictConfig:
        return loader.load_configuration(name, overrides, RunMode.RUN)

    parsed = OverridesParser.create(config_loader=loader).parse_overrides(texts)
    jobs = _first_job(parsed)
    cfg = compose_or_explain(compose, loader, jobs, texts)
    check_experiment(cfg)  # before a sweep's callback makes the store, or a search its study
    if "cv" in cfg:  # predict's config has none
        check_cv(cfg)  # cv.folds=[7] of 3 folds: one line now, not a failed job after the imports
    multirun = bool(args.multirun) or cfg.hydra.get("mode") == RunMode.MULTIRUN
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(_needs_multirun(sweeps[0]))
    for i, override in enumerate(parsed):  # a key of one option may be missing from another
        folds = override.get_key_element().lstrip("+~") == "cv.folds"  # each job's folds: in 0..n_folds-1
        if override.is_discrete_sweep() and (folds or override.key_or_group in cfg.hydra.runtime.choices):
            for value in _sweep_values(override)[1:]:
                job = [*jobs[:i], f"{override.get_key_element()}={value}", *jobs[i + 1:]]
                composed = compose_or_explain(compose, loader, job, texts)
                if folds:
                    check_cv(composed)
    size = cfg.hydra.sweeper.get("max_batch_size") if multirun else None  # Hydra's own check is a bare assert
    if size is not None and not Range(integer=True, low=1).admits(size):
        raise ConfigError(f"hydra.sweeper.max_batch_size={show(size)} must be an integer >= 1 (or null: all jobs "
                          f"at once).")
    if multirun and "optuna" in str(cfg.hydra.sweeper.get("_target_") or ""):
        try:
            import optuna  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"hydra/sweeper=optuna needs Optuna, which cannot be imported here ({exc}); "
                              f"install it: pip install 'optuna>=4,<6'.") from None


def _loader(config_dir: str | None):
    """Hydra's config loader as @hydra.main builds it: conf/, and --config-dir in front."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_config_search_path(f"file://{CONF_DIR}")
    if config_dir is not None:
        folder = os.path.abspath(config_dir)
        if not os.path.isdir(folder):
            raise ConfigError(f"--config-dir {config_dir}: no such folder.")
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    return ConfigLoaderImpl(config_search_path=search_path)


def _first_job(parsed: list[Override]) -> list[str | None]:
    """Each override as one job would get it: a sweep stands for its first value (None: left out)."""
    jobs: list[str | None] = []
    for override in parsed:
        if not override.is_sweep_override():
            jobs.append(override.input_line)
        elif override.is_interval_sweep():
            jobs.append(f"{override.get_key_element()}={override.value().start!r}")
        else:
            values = _sweep_values(override)  # empty: a range with no values, a glob that matches nothing
            jobs.append(f"{override.get_key_element()}={values[0]}" if values else None)
    return jobs


def _sweep_values(override: Override) -> list[str]:
    """A sweep's values; a range Hydra cannot step through (step 0, nan) is one line."""
    try:
        return list(override.sweep_string_iterator())
    except HydraException:
        return []
    except (ValueError, ArithmeticError) as exc:  # range(0, 2, 0), range(0.0, 0.2, nan)
        reason = str(exc) if isinstance(exc, ValueError) else "a bound or the step is not a finite number"
        raise ConfigError(f"{override.input_line}: {reason}; a range needs finite "
                          f"numbers and a step other than 0, e.g. range(0, 4) or range(0.0, 0.2, 0.05).") from None


def _needs_multirun(override: Override) -> str:
    key = override.get_key_element()
    simple = override.value_type == ValueType.SIMPLE_CHOICE_SWEEP
    as_list = f"; for one list value write {key}=[{override.get_value_string()}]" if simple else ""
    return f"{override.input_line} is a sweep: add -m to run one job per value (or a search){as_list}."


def compose_or_explain(compose: Compose, loader, jobs: Sequence[str | None], typed: Sequence[str]) -> DictConfig:
    """compose(jobs), or ConfigError with Hydra's complaint as one line. `typed[i]`: what the user
    wrote for jobs[i] (a sweep composed as one of its values is named as written)."""
    kept = [(job, text) for job, text in zip(jobs, typed, strict=True) if job is not None]
    try:
        return compose([job for job, _ in kept])
    except Exception as exc:  # noqa: BLE001 (Hydra's loader: every error it raises is the user's one line)
        raise ConfigError(explain(exc, [job for job, _ in kept], compose, loader, [text for _, text in kept])) from None


def explain(exc: Exception, overrides: list[str], compose: Compose, loader, typed: Sequence[str] | None = None) -> str:
    """Hydra's composition error in one line, without its advice to add `+` (a key added that
    way is one nothing reads) and without echoing every override."""
    typed = list(typed) if typed is not None else overrides
    message = str(exc).strip()
    first = message.splitlines()[0] if message else type(exc).__name__
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        return _missing_option(exc.missing_cfg_file, list(exc.options), overrides, typed)
    if found := re.match(r"Could not override '([^'@]+)'\. No match in the defaults list", message):
        shown = _typed(found.group(1), overrides, typed)
        return f"{shown}: {found.group(1)} is not in the defaults list; add it with +{shown.lstrip('+')}."
    if found := re.match(r"Could not override '([^'@]+)'\.", message):
        key = found.group(1)
        full = str(getattr(exc.__cause__, "full_key", "") or "")
        return _unknown_key(full if full.startswith(key + ".") else key, key, overrides, compose, loader, typed)
    if found := re.match(r"Could not delete from config\. '([^']+)' does not exist", message):
        return _unknown_key(found.group(1), found.group(1), overrides, compose, loader, typed)
    if found := re.match(r"Could not append to config\. An item is already at '([^']+)'", message) or \
            re.match(r"Multiple values for ([^ ]+?)\.? To override", message):
        shown = _typed(found.group(1), overrides, typed)
        return f"{shown}: {found.group(1)} is already in the config; drop the + ({shown.lstrip('+')})."
    if first.startswith("Config group override must be a string or a list"):  # group=null
        keys = [o.partition("=")[0].lstrip("+~") for o in typed if o.partition("=")[2] == "null"]
        groups = [k for k in keys if "/" in k or (CONF_DIR / k).is_dir()]  # not a plain key set to null
        return (f"{groups[0] + '=null' if groups else 'a config group'}: a config group takes one of its options "
                f"by name, not null (python -m ftsweep --help lists them).")
    cause = str(exc.__cause__ or "").strip().splitlines()
    return f"cannot compose the config: {first}" + (f" ({cause[0]})" if cause else "")


def _typed(key: str, overrides: list[str], typed: Sequence[str]) -> str:
    """What the user wrote for `key` (an override's key, without +, ~ or @package)."""
    for override, text in zip(overrides, typed, strict=True):
        if override.split("=", 1)[0].lstrip("+~").split("@", 1)[0] == key:
            return text
    return key


def _missing_option(missing: str, options: list[str], overrides: list[str], typed: Sequence[str]) -> str:
    group, _, value = missing.rpartition("/")
    shown = _typed(group, overrides, typed)
    ordered = difflib.get_close_matches(value, options, n=len(options), cutoff=0.0)
    ordered += sorted(set(options) - set(ordered))
    near = difflib.get_close_matches(value, options, n=1)
    hint = f" (did you mean {group}={near[0]}?)" if near else ""
    return f"{shown}: {group} has no option {value!r}{hint}; its options, closest first: {', '.join(ordered)}."


def _unknown_key(key: str, overridden: str, overrides: list[str], compose: Compose, loader,
                 typed: Sequence[str]) -> str:
    """A key the composed config lacks: another option of its group may have it; else the closest key."""
    shown = _typed(overridden, overrides, typed)
    rest = [o for o, t in zip(overrides, typed, strict=True) if t != shown]
    try:
        cfg = compose(rest)
    except Exception:  # noqa: BLE001 (a second problem: name the first without a suggestion)
        return f"unknown key {key} in {shown}."
    if key.startswith("hydra.sweeper.params.") and len(key.split(".")) > 3:  # a dotted key is one name there
        searched = key[len("hydra.sweeper.params."):]
        value = shown.partition("=")[2]
        return (f"{shown}: a key is searched by giving its range as an override of its own, {searched}={value} "
                f"(with -m hydra/sweeper=optuna); hydra.sweeper.params holds a preset's ranges.")
    if key.startswith(("hydra.sweeper.pruner.", "hydra.sweeper.sampler.")) and \
            cfg.hydra.runtime.choices.get("hydra/sweeper") != "optuna":  # composed from the search's defaults
        return (f"{shown}: hydra.sweeper.{key.split('.')[2]} belongs to a search; add -m hydra/sweeper=optuna (or "
                f"-m +sweep=search_llrd).")
    elsewhere = _options_with_key(cfg, key, loader)
    if elsewhere is not None:
        group, choice, having = elsewhere
        names = ", ".join(f"{group}={o}" for o in having)
        return f"{shown}: {group}={choice} has no key {key[len(group) + 1:]}; {names} {'has' if len(having) == 1 else 'have'} it."
    keys = flat_keys(cfg.hydra if key.startswith("hydra.") else cfg, "hydra." if key.startswith("hydra.") else "")
    parts = key.split(".")
    for ancestor in (".".join(parts[:n]) for n in range(1, len(parts))):
        if ancestor in keys and not any(k.startswith(ancestor + ".") for k in keys):
            return f"unknown key {key} in {shown}: {ancestor} is a value, not a group of keys."
    near = closest(key, keys)
    if near is not None:
        return f"unknown key {key} in {shown}: did you mean {near}?"
    parent = key.rpartition(".")[0]
    siblings = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
    if parent and 0 < len(siblings) <= LIST_KEYS_AT:
        return f"unknown key {key} in {shown}: {parent} has {', '.join(siblings)}."
    where = "hydra" if key.startswith("hydra.") else "job"
    return f"unknown key {key} in {shown}: no key is close (python -m ftsweep --cfg {where} lists them)."


def _options_with_key(cfg: DictConfig, key: str, loader) -> tuple[str, str, list[str]] | None:
    """(group, its chosen option, the other options that set `key`) when `key` belongs to a config
    group whose chosen option lacks it and other options have it (optimizer.layer_decay: llrd)."""
    groups = [g for g, c in cfg.hydra.runtime.choices.items() if c is not None and key.startswith(g.replace("/", ".") + ".")]
    if not groups:
        return None
    group = max(groups, key=len)
    choice = str(cfg.hydra.runtime.choices[group])
    path = key[len(group) + 1:].split(".")
    having = []
    for option in loader.get_group_options(group):
        found = loader.repository.load_config(f"{group}/{option}") if option != choice else None
        if found is not None and found.header.get("package") in (None, "", "_group_") and _has(found.config, path):
            having.append(option)
    return (group.replace("/", "."), choice, having) if having else None


def _has(node, path: list[str]) -> bool:
    for part in path:
        if not isinstance(node, DictConfig) or part not in node.keys():  # keys(): `???` and null count
            return False
        node = node._get_node(part)
    return True


def flat_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every key of the config as a dotted path, interpolations left unresolved."""
    keys = []
    for key in node.keys():
        path, child = f"{prefix}{key}", node._get_node(key)
        keys.append(path)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none() \
                and not child._is_interpolation():
            keys.extend(flat_keys(child, path + "."))
    return keys


def closest(key: str, keys: Sequence[str]) -> str | None:
    """The valid key nearest to a typo: among its siblings when its parent exists (trainer.epoch ->
    trainer.epochs), else among every path but its own ancestors (trainr.epochs -> trainer.epochs)."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    if siblings:
        near = difflib.get_close_matches(leaf, siblings, n=1)
        return (f"{parent}.{near[0]}" if parent else near[0]) if near else None
    near = difflib.get_close_matches(key, [k for k in keys if not key.startswith(k + ".")], n=1)
    return near[0] if near else None
