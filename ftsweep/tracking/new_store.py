"""A new SQLite store as a copy of an empty one that already has MLflow's schema.

MLflow builds a new SQLite file by running every migration since its first release: 4-8 s for
each new store, paid by every first run in a new output folder (and by most tests). A copy takes
milliseconds. The empty store, the template, is made once per MLflow version by MLflow itself, in
ftsweep's cache folder ($FTSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/ftsweep, else ~/.cache/ftsweep).
It holds no experiment: MLflow makes its Default experiment on the first open of each copy (its
artifacts under ./mlruns of the folder the store is first opened from), as it does for a store it
built. A template that is not at MLflow's latest schema, misses a table or holds an experiment is
made again; a copy MLflow will not open is removed and MLflow builds the store.

Anything that fails here (a read-only home, a full disk, a file system without hard links) leaves
the new store to MLflow's own migrations: slower, never different.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from pathlib import Path

from mlflow import MlflowClient

from ftsweep.files import cache_dir, folder_problem, part_path
from ftsweep.locks import sqlite_path

log = logging.getLogger(__name__)


def create_from_template(db: Path) -> bool:
    """Put an empty MLflow store at `db` unless something is there already; True if it did. Call it
    under the store's lock (locks.store_lock); the hard link still never replaces a file another
    program made meanwhile."""
    if db.exists():
        return False
    try:
        template = _template()
        if template is None:
            return False
        part = part_path(db)
        try:
            shutil.copyfile(template, part)
            os.link(part, db)
            return True
        except FileExistsError:
            return False
        finally:
            part.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 (whatever fails here, MLflow's own way still works)
        log.debug("no store template (%s): MLflow builds %s itself", exc, db)
        return False


def open_client(uri: str, copied: Path | None) -> MlflowClient:
    """MLflow's client on `uri`; a store just copied from the template (`copied`) that MLflow will
    not open is removed, and MLflow builds the store itself."""
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception:
        if copied is None:
            raise
        copied.unlink(missing_ok=True)
        _forget_engine(copied)
        return MlflowClient(tracking_uri=uri)


def _forget_engine(db: Path) -> None:
    """MLflow keeps one engine per SQLite URI for the process's life: one still open on a removed
    file would go on writing into it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for key in [k for k in SqlAlchemyStore._engine_map if sqlite_path(k) == db]:
        SqlAlchemyStore._engine_map.pop(key).dispose()


def _template() -> Path | None:
    """The template for this MLflow, made here if missing; None where the cache folder cannot be
    written (MLflow's engine would retry a read-only file for ~100 s)."""
    import mlflow
    from mlflow.store.db.utils import _get_latest_schema_revision

    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"mlflow-{mlflow.__version__}-empty-store.db"
    latest = _get_latest_schema_revision()
    if _is_template(path, latest):
        return path
    if folder_problem(folder) is not None:
        return None
    part = part_path(path)
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(f"sqlite:///{part}", part.parent.as_uri())
        _forget_engine(part)  # the file is renamed next
        with contextlib.closing(sqlite3.connect(part)) as con, con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        if not _is_template(part, latest):
            return None
        os.replace(part, path)  # atomic: another process making one at the same time is just as good
    finally:
        part.unlink(missing_ok=True)
    return path


def _is_template(path: Path, latest: str) -> bool:
    """A whole file at MLflow's latest schema, with every table MLflow's models name, and no
    experiment (not a foreign, older or damaged one: MLflow would run its first migration over a
    file missing a table, and leave that table at its first version)."""
    from mlflow.store.db.utils import Base  # with every ORM table registered

    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as con:
            version = con.execute("SELECT version_num FROM alembic_version").fetchone()
            experiments = con.execute("SELECT count(*) FROM experiments").fetchone()[0]
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False
    return version is not None and version[0] == latest and experiments == 0 and set(Base.metadata.tables) <= tables
