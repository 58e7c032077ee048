"""The config's shape: every group and key present, none unknown (the keys any file under conf/
sets, scanned once), no `???` left. Checked before anything reads a value."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ftsweep.config.rules import has_key
from ftsweep.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("data", "trainer", "model", "head", "optimizer", "scheduler", "reinit", "swa", "eval", "cv", "tracking")


def check_structure(cfg: DictConfig) -> None:
    """Every group and key present, none unknown, no `???` left: before anything reads the config."""
    check_known_keys(cfg)
    _check_required(cfg)


def _check_required(cfg: DictConfig) -> None:
    """`???` values Hydra leaves for the user (data=commonlit needs data.path)."""
    if has_key(cfg, "data.path") and OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError(f"data={cfg.data.get('name', 'commonlit')} needs a file: add data.path=/path/to/train.csv")
    for key in ("model.name", "tracking.uri"):
        parent, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(cfg[parent], leaf):
            raise ConfigError(f"{key} is not set; add {key}=...")


@lru_cache(maxsize=1)
def known_keys() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Per group (and "" for the top level): the keys any file under conf/ sets — what
    `+group.key=...` may add — and the keys every option of the group sets — what `~` may not
    remove. Keys nothing reads (`+trainer.epoch=3`, a typo of epochs) would otherwise pass silently."""
    known: dict[str, set[str]] = {group: set() for group in ("", *GROUPS)}
    options: dict[str, list[set[str]]] = {group: [] for group in GROUPS}
    for path in CONF_DIR.rglob("*.yaml"):
        rel = path.relative_to(CONF_DIR)
        node = OmegaConf.to_container(OmegaConf.load(path))
        if not isinstance(node, dict) or rel.name == "predict.yaml":
            continue
        node.pop("defaults", None)
        node.pop("hydra", None)
        if "@package _global_" in path.read_text().split("\n", 3)[0] or len(rel.parts) == 1:
            known[""] |= set(node)
            for group in GROUPS:
                if isinstance(node.get(group), dict):
                    known[group] |= set(node[group])
        elif rel.parts[0] in options:
            known[rel.parts[0]] |= set(node)
            options[rel.parts[0]].append(set(node))
    known[""] |= set(GROUPS)
    required = {g: frozenset(set.intersection(*sets)) if sets else frozenset() for g, sets in options.items()}
    return {g: (frozenset(keys), required.get(g, frozenset())) for g, keys in known.items()}


def check_known_keys(cfg: DictConfig) -> None:
    table = known_keys()
    for group in ("", *GROUPS):
        node = cfg.get(group) if group else cfg
        if not isinstance(node, DictConfig):
            if group in cfg:
                raise ConfigError(f"{group}={node!r} must be the config group {group}, not a value.")
            continue
        known, required = table[group]
        prefix = f"{group}." if group else ""
        for key in node.keys():
            if key not in known:
                near = _nearest(str(key), known)
                hint = (f" (did you mean {' or '.join(prefix + k for k in near)}?)" if near
                        else " (python -m ftsweep --cfg job lists the keys)")
                raise ConfigError(f"unknown key {prefix}{key}: nothing reads it{hint}.")
        for key in sorted(required - set(node.keys())):
            raise ConfigError(f"{prefix}{key} is missing (removed with ~?); every run needs it: put it back.")
    for group in GROUPS:
        if group not in cfg:
            raise ConfigError(f"the config group {group} is missing; put it back (e.g. {group}=<option>).")


def _nearest(key: str, known) -> list[str]:
    """The closest known key, or the closest two when they are equally close (lable: label or table)."""
    near = difflib.get_close_matches(key, sorted(known), n=2)
    ratio = [difflib.SequenceMatcher(None, key, k).ratio() for k in near]
    return sorted(near) if len(near) == 2 and ratio[0] == ratio[1] else near[:1]
