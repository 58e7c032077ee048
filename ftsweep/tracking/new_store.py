"""A new SQLite store as a copy of an empty one that already has MLflow's schema.

MLflow builds a new SQLite file by running every migration since its first release: 4-8 s for
each new store, paid by every first run in a new output folder (and by most tests). A copy takes
milliseconds. The empty store, the template, is made once per MLflow version by MLflow itself, in
ftsweep's cache folder ($FTSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/ftsweep, else ~/.cache/ftsweep).
It holds no experiment: MLflow makes its Default experiment on the first open of each copy, with
that store's own artifact folder, as it does for a store it built.

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

from ftsweep.files import cache_dir

log = logging.getLogger(__name__)


def create_from_template(db: Path) -> None:
    """Put an empty MLflow store at `db` unless something is there already. Call it under the
    store's lock (locks.store_lock); the hard link still never replaces a file another program
    made meanwhile."""
    if db.exists():
        return
    try:
        template = _template()
        part = db.with_name(f".{db.name}.{os.getpid()}.part")
        shutil.copyfile(template, part)
        try:
            os.link(part, db)
        except FileExistsError:
            pass
        finally:
            part.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as exc:
        log.debug("no store template (%s): MLflow builds %s itself", exc, db)


def _template() -> Path:
    import mlflow

    path = cache_dir() / f"mlflow-{mlflow.__version__}-empty-store.db"
    if _is_template(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.unlink(missing_ok=True)
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(f"sqlite:///{part}", part.parent.as_uri()).engine.dispose()
        with contextlib.closing(sqlite3.connect(part)) as con, con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        os.replace(part, path)  # atomic: another process making one at the same time is just as good
    finally:
        part.unlink(missing_ok=True)
    return path


def _is_template(path: Path) -> bool:
    """A whole file with a schema version and no experiment (not a half-written or foreign one)."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as con:
            version = con.execute("SELECT version_num FROM alembic_version").fetchone()
            experiments = con.execute("SELECT count(*) FROM experiments").fetchone()[0]
    except sqlite3.Error:
        return False
    return version is not None and experiments == 0
