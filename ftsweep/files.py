"""Can ftsweep write there? Tried, not asked: as root, os.access says yes to /proc, where
nothing can be created, and a path under a regular file fails only when it is used. And where
ftsweep keeps what it makes once per machine (its cache folder)."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path


def cache_dir() -> Path | None:
    """$FTSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/ftsweep, else ~/.cache/ftsweep; None where none is
    known (no home). A relative value is ignored, as the XDG spec says: it would depend on the
    folder a job runs in. What is there can be deleted at any time: it is made again when needed."""
    for name, below in (("FTSWEEP_CACHE_DIR", ""), ("XDG_CACHE_HOME", "ftsweep")):
        value = os.environ.get(name, "")
        if value and Path(value).expanduser().is_absolute():
            return Path(value).expanduser() / below
    try:
        return Path.home() / ".cache" / "ftsweep"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry for this user
        return None


def part_path(target: Path) -> Path:
    """A name beside `target` for writing it before a rename, unique across hosts and containers
    that share the folder (their process ids can be equal)."""
    return target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.part")


def write_into_place(target: Path, data: bytes) -> None:
    """Write, then rename: a reader of `target` (a parallel job) sees the whole file or none."""
    part = part_path(target)
    try:
        part.write_bytes(data)
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)


def _blocker(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is a file (a folder cannot be made under it)."""
    found = next((p for p in path.parents if p.exists()), None)
    return found if found is not None and not found.is_dir() else None


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or None when they can."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = _blocker(folder)
        return f"{blocker} is a file" if blocker is not None else f"cannot create it: {exc.strerror or exc}"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ftsweep-write-test-"):
            pass
    except OSError as exc:
        return f"cannot write in it: {exc.strerror or exc}"
    return None


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be written, or None; a file made to find out is removed again."""
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        blocker = _blocker(path)
        return f"{blocker} is a file" if blocker is not None else exc.strerror or str(exc)
    if not existed:
        path.unlink(missing_ok=True)
    return None
