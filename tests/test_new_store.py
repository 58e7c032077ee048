"""A new SQLite store is a copy of an empty template (tracking/new_store.py): the same store MLflow
would have built with its migrations, never over an existing file, and MLflow's own way whenever
the template cannot be had."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from ftsweep.files import cache_dir
from ftsweep.tracking import new_store
from ftsweep.tracking.store import Tracker


def _schema(db: Path) -> list[tuple]:
    """Each table's and index's definition, its lines sorted: MLflow's own migrations write a
    table's constraints in an order that changes from one process to the next (hash seeds)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return sorted((kind, name, table, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                  for kind, name, table, sql in rows)


def _rows(db: Path, query: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(query).fetchall()


def _experiments(db: Path) -> list[tuple[str, str, str]]:
    """(id, name, artifact location with the store's folder written as <here>)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return sorted((e.experiment_id, e.name, e.artifact_location.replace(str(db.parent), "<here>"))
                  for e in client.search_experiments())


def test_a_copied_store_is_the_store_mlflow_builds(tmp_path, monkeypatch):
    """Same tables, indexes and schema version; the same Default experiment, at the new store's own
    path (made by MLflow on first open, as for a store it built); the same ids for new experiments."""
    monkeypatch.setenv("FTSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "copied").mkdir()
    (tmp_path / "built").mkdir()
    copied, built = tmp_path / "copied" / "mlflow.db", tmp_path / "built" / "mlflow.db"
    for folder, db in ((tmp_path / "copied", copied), (tmp_path / "built", built)):
        monkeypatch.chdir(folder)  # MLflow puts the Default experiment's artifacts under the working folder
        if db is built:
            MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # MLflow's migrations
        else:
            assert new_store.create_from_template(db)  # a copy, not MLflow's migrations
            Tracker(f"sqlite:///{db}", None)
        MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("x", artifact_location=(folder / "a").as_uri())
    assert (tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty-store.db").is_file()
    assert _schema(copied) == _schema(built)
    assert _rows(copied, "SELECT * FROM alembic_version") == _rows(built, "SELECT * FROM alembic_version")
    assert _experiments(copied) == _experiments(built) == [
        ("0", "Default", "<here>/mlruns/0"), ("1", "x", "file://<here>/a")]
    assert _rows(copied, "SELECT * FROM workspaces") == _rows(built, "SELECT * FROM workspaces")


def test_an_existing_file_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("FTSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"someone else's file")
    new_store.create_from_template(db)
    assert db.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no template made, no part file left


@pytest.mark.parametrize("cache", ["a file, not a folder", "a garbage template", "an older schema",
                                   "a table missing"])
def test_a_broken_cache_still_gives_a_working_store(tmp_path, monkeypatch, cache):
    """A cache folder that cannot be used leaves the store to MLflow's migrations; a template that
    is not an empty store at MLflow's latest schema (a foreign file, one from an MLflow build with
    the same version string) is made again."""
    template = tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty-store.db"
    if cache == "a file, not a folder":
        (tmp_path / "cache").write_text("x")
    elif cache == "a garbage template":
        template.parent.mkdir()
        template.write_bytes(b"SQLite format 3\0 but cut short")
    else:
        monkeypatch.setenv("FTSWEEP_CACHE_DIR", str(tmp_path / "cache"))
        new_store.create_from_template(tmp_path / "first.db")
        with contextlib.closing(sqlite3.connect(template)) as con, con:
            con.execute("UPDATE alembic_version SET version_num = 'an_older_one'" if cache == "an older schema"
                        else "DROP TABLE runs")
        (tmp_path / "first.db").unlink()
    monkeypatch.setenv("FTSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e")
    assert [e.name for e in tracker.client.search_experiments()] == ["e", "Default"]
    if cache != "a file, not a folder":  # made again
        assert _rows(template, "SELECT count(*) FROM experiments") == [(0,)]
        assert "runs" in {name for (name,) in _rows(template, "SELECT name FROM sqlite_master")}
        assert _rows(template, "SELECT * FROM alembic_version") == _rows(tmp_path / "mlflow.db",
                                                                          "SELECT * FROM alembic_version")
    assert not [p for p in tmp_path.rglob("*.part")]


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FTSWEEP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ftsweep"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ftsweep"
    monkeypatch.setenv("FTSWEEP_CACHE_DIR", "~/elsewhere")
    assert cache_dir() == tmp_path / "home" / "elsewhere"
    monkeypatch.setenv("FTSWEEP_CACHE_DIR", "relative/cache")  # would move with each job's folder: ignored
    monkeypatch.setenv("XDG_CACHE_HOME", "also/relative")
    assert cache_dir() == tmp_path / "home" / ".cache" / "ftsweep"


def test_a_copy_mlflow_will_not_open_is_replaced_by_the_store_mlflow_builds(tmp_path, monkeypatch):
    """A template that passes the checks yet is not a store MLflow opens (a damaged cache): the copy
    is removed, MLflow builds the store, and the run goes on."""
    monkeypatch.setenv("FTSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    new_store.create_from_template(tmp_path / "first.db")
    template = tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty-store.db"
    with contextlib.closing(sqlite3.connect(template)) as con, con:
        # every table, the latest version, no experiment: the checks pass, but no row goes in
        con.execute("CREATE TRIGGER damaged BEFORE INSERT ON experiments BEGIN SELECT RAISE(ABORT, 'damaged'); END")
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e")
    assert "damaged" not in {name for (name,) in _rows(tmp_path / "mlflow.db", "SELECT name FROM sqlite_master")}
    assert tracker.start_run("a run", {})
