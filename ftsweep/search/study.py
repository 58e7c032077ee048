"""The Optuna study behind a search: where it lives, which trials count, and retrying the
trials a killed sweep left RUNNING.

A trial belongs to the sweep process that asked for it (its owner token and heartbeat are
trial attributes, with the same rules as a unit's lease: exact on one machine, a heartbeat
elsewhere). A RUNNING trial whose owner is gone was interrupted, not bad: it is marked FAIL
and its parameters are queued again under the same lineage, so the retry resumes the
interrupted trial's MLflow run and keeps the folds it finished.

A study belongs to one dataset and one set of fixed overrides (study attributes, set by its
first run): trials are only comparable on the same rows and the same fixed config, so a rerun
on other data or other fixed overrides is refused, naming the option that starts a new study.
A rerun under another pruner is said, not refused: it changes which trials stop, not what a
complete trial measures.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftsweep.errors import FtsweepError
from ftsweep.locks import owner_alive, owner_tags, sqlite_path, store_lock
from ftsweep.tags import (
    DATA_FINGERPRINT_TAG,
    DIED_ATTR,
    FIXED_OVERRIDES_ATTR,
    INTERRUPTED_ATTR,
    LINEAGE_ATTR,
    PRUNERS_ATTR,
)

log = logging.getLogger("ftsweep")
# Overrides that change where results go or how fast, not what is computed (as the unit keys);
# data.path too: the rows themselves are checked by their fingerprint (a moved file is the same data).
_NOT_COMPUTED = ("paths.", "tracking.", "trainer.num_threads", "trainer.workers_per_gpu", "data.path=")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_storage(tracking_uri: str, output_root: str) -> str:
    """An SQLite file beside the MLflow store (under output_root when the store is a server)."""
    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path(output_root)
    return f"sqlite:///{folder.expanduser().absolute()}/optuna.db"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    db = sqlite_path(url)
    # parallel trials write to one SQLite file: wait for the lock instead of failing
    engine = {"connect_args": {"timeout": 60}} if db is not None else {"pool_pre_ping": True}
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        with store_lock(url):  # two sweeps creating one new SQLite schema at once
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:  # noqa: BLE001 (SQLAlchemy, driver and OS errors: one line)
        if url.startswith("postgresql://") and "import" in str(exc):  # SQLAlchemy's default driver: psycopg 3
            raise FtsweepError(f"cannot open the Optuna storage {url}: no driver for it; write "
                               f"postgresql+psycopg2://{url[len('postgresql://'):]} (psycopg2 comes with make "
                               f"install).") from None
        raise FtsweepError(f"cannot open the Optuna storage {url}: {str(exc).splitlines()[0][:300]}; set "
                           f"hydra.sweeper.storage to sqlite:///path/optuna.db or a postgresql+psycopg2:// "
                           f"URL.") from None


def existing_storage(text: str) -> str:
    """A search's storage to look at (Optuna Dashboard), never made: an SQLite file Optuna wrote,
    as its sqlite:/// URL (a plain path is taken as one), or another database's URL as given."""
    url = text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"
    db = sqlite_path(url)
    if db is None:
        return url
    named = f"{text}: " if text not in (url, str(db)) else ""  # a relative path: what it was taken as
    if db.is_dir():
        raise FtsweepError(f"{named}{url} is a folder; name the search's SQLite file in it, e.g. "
                           f"sqlite:///{db / 'optuna.db'}.")
    if not db.is_file():
        raise FtsweepError(f"{named}no Optuna storage at {db}; run a search first (it makes one), or name a "
                           f"search's storage (hydra.sweeper.storage; make dashboard STORAGE=sqlite:///path/optuna.db).")
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise FtsweepError(f"{named}{db} is not an SQLite database ({exc}); name a search's storage "
                           f"(hydra.sweeper.storage, e.g. sqlite:///outputs/optuna.db).") from None
    if not {"studies", "trials"} <= tables:
        raise FtsweepError(f"{named}{db} is an SQLite database but no Optuna storage (it has no studies); name a "
                           f"search's storage (hydra.sweeper.storage, e.g. sqlite:///outputs/optuna.db).")
    return url


def open_study(name: str, storage: optuna.storages.RDBStorage, direction: str, sampler=None,
               pruner=None) -> optuna.Study:
    with store_lock(storage.url):
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise FtsweepError(f"study {name!r} in {storage.url} was created to {study.direction.name.lower()}; "
                           f"use that direction or another hydra.sweeper.study_name.")
    return study


def lineage(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(LINEAGE_ATTR, trial.number))


def lineage_counts(trials: list[FrozenTrial]) -> tuple[dict[TrialState, int], int]:
    """The trials as the user asked for them: each lineage counted once, in the state of its newest
    attempt (a trial whose job died and that completed on its retry is complete, not failed); and
    how many attempts were cut short (a job that died, a sweep interrupted) and queued again."""
    newest: dict[int, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        newest[lineage(trial)] = trial
    counts = {state: sum(t.state == state for t in newest.values()) for state in TrialState}
    retried = sum(t.state == TrialState.FAIL and bool(t.user_attrs.get(INTERRUPTED_ATTR)) for t in trials)
    return counts, retried


def retry_interrupted(study: optuna.Study) -> list[int]:
    """FAIL the RUNNING trials whose sweep died and queue their parameters again (same lineage).
    Returns the lineages queued."""
    queued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_alive(trial.user_attrs):
            continue
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(INTERRUPTED_ATTR, True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={LINEAGE_ATTR: lineage(trial)})
        queued.append(lineage(trial))
    if queued:
        log.info("search: trial(s) %s were interrupted; they run again and keep their finished folds", queued)
    return queued


def retry_died(study: optuna.Study, trial: optuna.trial.Trial) -> bool:
    """A trial whose job's process died (kill -9, the out-of-memory killer; under joblib the trials
    sharing its pool of workers too): FAIL it and queue its parameters again, same lineage, once.
    False when its lineage died before: it is left to fail."""
    if trial.user_attrs.get(DIED_ATTR):
        return False
    trial.set_user_attr(INTERRUPTED_ATTR, True)
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={LINEAGE_ATTR: lineage(trial), DIED_ATTR: True})
    return True


def in_progress(study: optuna.Study) -> int:
    """Trials that count toward n_trials: finished (complete or pruned) or run by a live sweep."""
    trials = study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING))
    return sum(1 for t in trials if t.state in COUNTED or owner_alive(t.user_attrs))


def own(trial: optuna.trial.Trial) -> None:
    """This process holds the trial: what retry_interrupted checks."""
    for key, value in owner_tags().items():
        trial.set_user_attr(key, value)
    if LINEAGE_ATTR not in trial.user_attrs:
        trial.set_user_attr(LINEAGE_ATTR, trial.number)


def identity(fixed: list[str]) -> list[str]:
    """The fixed overrides that change what a trial computes, in one order."""
    return sorted({o.strip() for o in fixed if not o.lstrip("+~").startswith(_NOT_COMPUTED)})


def bind(study: optuna.Study, storage_url: str, data_fingerprint: str, fixed: list[str]) -> None:
    """Tie the study to its rows and fixed overrides on its first run; refuse a rerun on others.
    A study from before these attributes (or an empty one) takes the current ones."""
    was_data, was_fixed, now = study.user_attrs.get(DATA_FINGERPRINT_TAG), study.user_attrs.get(FIXED_OVERRIDES_ATTR), identity(fixed)
    where = f"study {study.study_name!r} in {storage_url}"
    new_study = "start a new study with hydra.sweeper.study_name=NEW_NAME"
    if was_data is not None and was_data != data_fingerprint:
        raise FtsweepError(f"{where} was run on other data (rows fingerprint {was_data[:12]}, now "
                           f"{data_fingerprint[:12]}): its trials would be ranked with trials on these rows; "
                           f"{new_study} (or use the data it was run on).")
    if was_fixed is not None and list(was_fixed) != now:
        added, dropped = sorted(set(now) - set(was_fixed)), sorted(set(was_fixed) - set(now))
        change = "; ".join(part for part in (f"now also {' '.join(added)}" if added else "",
                                             f"no longer {' '.join(dropped)}" if dropped else "") if part)
        raise FtsweepError(f"{where} was run with other fixed overrides ({change}): its trials would be "
                           f"ranked with trials of another config; {new_study} (or give the overrides it "
                           f"was run with).")
    if was_data is None:
        study.set_user_attr(DATA_FINGERPRINT_TAG, data_fingerprint)
    if was_fixed is None:
        study.set_user_attr(FIXED_OVERRIDES_ATTR, now)


def note_pruner(study: optuna.Study, rule: str) -> None:
    """A study continued under another pruning rule is not refused (complete trials stay comparable:
    same rows, same fixed config) but said, as its pruned trials were stopped by other rules. The
    study keeps each change of rule in order."""
    used = list(study.user_attrs.get(PRUNERS_ATTR) or [])
    if used and used[-1] == rule:
        return
    if used and study.get_trials(deepcopy=False, states=COUNTED):
        log.warning("search: study %r was pruned by %s before; this run prunes by %s, so its pruned trials were "
                    "stopped by different rules (give the earlier pruner's settings to keep one rule).",
                    study.study_name, used[-1], rule)
    study.set_user_attr(PRUNERS_ATTR, [*used, rule])
