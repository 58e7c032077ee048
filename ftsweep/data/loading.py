"""Read a training CSV (CommonLit's schema by default) into a checked frame.

Every check raises DataError with one line naming the file, the problem and
the fix, so a typo costs seconds instead of a failed fold an hour in.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ftsweep.data import demo as demo_data
from ftsweep.errors import DataError
from ftsweep.files import cache_dir, write_into_place

log = logging.getLogger(__name__)

# Canonical column names inside ftsweep, whatever the file calls them.
ID, TEXT, TARGET = "id", "excerpt", "target"
# Beyond this a float32 squared error (~3.4e38 at most) overflows within a batch: the loss becomes inf.
MAX_TARGET = 1e18


def resolve_path(data_cfg: DictConfig, output_root: str | Path) -> Path:
    """The CSV to read: the user's file, or the demo file (generated once, then cached)."""
    if data_cfg.name == "demo" and data_cfg.get("path") is None:
        return ensure_demo_csv(data_cfg, Path(output_root))
    return Path(str(data_cfg.path)).expanduser()


def ensure_demo_csv(data_cfg: DictConfig, output_root: Path) -> Path:
    """The demo CSV under output_root/data: a copy of the one in ftsweep's cache folder, which is
    generated once (1-2 s of pure Python for every new output folder before) and kept with its
    sha256, so a damaged copy there is made again, never used; generated in place when the cache
    folder cannot be written."""
    name = f"demo_v1_n{data_cfg.n_rows}_w{data_cfg.words_per_passage}_s{data_cfg.generator_seed}.csv"
    path = output_root / "data" / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = cache_dir()
    try:
        if folder is None:
            raise OSError("no cache folder (no home)")
        cached = folder / "data" / name
        if not _whole(cached):
            cached.parent.mkdir(parents=True, exist_ok=True)
            _write_demo(data_cfg, cached)
            write_into_place(_digest_path(cached), _sha256(cached).encode())
        write_into_place(path, cached.read_bytes())
    except OSError as exc:
        log.debug("demo data not cached (%s): generated in %s", exc, path.parent)
        _write_demo(data_cfg, path)
    return path


def _digest_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _whole(cached: Path) -> bool:
    """The cached CSV is there and is the file that was written (its recorded sha256)."""
    try:
        return _digest_path(cached).read_text().strip() == _sha256(cached)
    except OSError:
        return False


def _write_demo(data_cfg: DictConfig, path: Path) -> None:
    frame = demo_data.generate(data_cfg.n_rows, data_cfg.words_per_passage, data_cfg.generator_seed)
    write_into_place(path, frame.to_csv(index=False).encode())
    log.info("generated the synthetic demo data set: %s (%d rows)", path, len(frame))


def load_frame(data_cfg: DictConfig, path: Path, n_folds: int) -> pd.DataFrame:
    """Read and check ``path``; return columns id, excerpt, target (canonical names)."""
    raw = _read_csv(path)
    columns = {ID: data_cfg.id_column, TEXT: data_cfg.text_column, TARGET: data_cfg.target_column}
    missing = [name for name in columns.values() if name not in raw.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has {list(raw.columns)}. "
            f"Point data.id_column / data.text_column / data.target_column at the right names."
        )
    frame = raw[list(columns.values())].set_axis(list(columns), axis=1)
    frame[TARGET] = _numeric_targets(frame, path, columns[TARGET])
    _check_texts(frame, path, columns[TEXT])
    _check_ids(frame, path, columns[ID])
    max_rows = data_cfg.get("max_rows")
    if max_rows is not None and max_rows < len(frame):
        # A fixed seed: the subset never changes with the training seed.
        frame = frame.sample(n=int(max_rows), random_state=0).sort_index()
    _check_size(frame, path, n_folds)
    return frame.reset_index(drop=True)


def load_texts(path: Path, id_column: str, text_column: str) -> pd.DataFrame:
    """A file to predict on (CommonLit's test.csv: id, excerpt, ...): columns id, excerpt."""
    raw = _read_csv(path)
    missing = [c for c in (id_column, text_column) if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {list(raw.columns)}. "
                        f"Point data.id_column / data.text_column at the right names.")
    frame = raw[[id_column, text_column]].set_axis([ID, TEXT], axis=1)
    _check_texts(frame, path, text_column)
    _check_ids(frame, path, id_column)
    return frame.reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: no such file. Give a CSV in CommonLit's format with data.path=/path/to/train.csv")
    if path.is_dir():
        raise DataError(f"{path} is a folder; data.path must name a CSV file.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; expected a CSV with a header row (id,excerpt,target,...).")
    try:
        # Every column as text: ids such as 00017 or 0.10 stay as written (numbers are parsed
        # where they are meant, the target), so outputs join back to the user's ids.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")  # BOM-safe
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8 CSV.") from None
    except (pd.errors.ParserError, csv.Error) as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{path}: not a readable comma-separated file ({first}).") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} has no header row or data; expected a CSV (id,excerpt,target,...).") from None
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {repeated} more than once; rename or drop the copies.")
    if len(frame.columns) == 1 and any(sep in frame.columns[0] for sep in ";\t|"):
        raise DataError(f"{path}: one column {frame.columns[0]!r} — the file is not comma-separated; save it as CSV.")
    if frame.empty:
        raise DataError(f"{path} has a header but no rows.")
    return frame


def _numeric_targets(frame: pd.DataFrame, path: Path, column: str) -> pd.Series:
    values = pd.to_numeric(frame[TARGET].str.strip(), errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        first = frame.index[bad][0]
        raise DataError(
            f"{path}: column {column!r} has {int(bad.sum())} missing, non-numeric or infinite value(s) "
            f"(first: row {first + 2}, id {frame[ID].iloc[first]!r}, value {frame[TARGET].iloc[first]!r}); "
            f"fix or drop those rows."
        )
    big = np.abs(values.to_numpy()) > MAX_TARGET
    if big.any():
        first = frame.index[big][0]
        largest = float(np.abs(values).max())
        raise DataError(
            f"{path}: column {column!r} reaches {largest:.3g} (first beyond {MAX_TARGET:g}: row {first + 2}, id "
            f"{frame[ID].iloc[first]!r}); training computes in float32, where the squared errors of such targets "
            f"overflow; {rescale_hint(largest)}."
        )
    if values.nunique() < 2:
        raise DataError(f"{path}: column {column!r} is constant ({values.iloc[0]}); there is nothing to learn.")
    return values


def rescale_hint(largest: float) -> str:
    """How to bring targets that reach `largest` back to a scale float32 training handles."""
    return f"rescale the targets (e.g. divide them by {10.0 ** math.ceil(math.log10(largest)):g})"


def _check_texts(frame: pd.DataFrame, path: Path, column: str) -> None:
    texts = frame[TEXT]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        first = frame.index[empty][0]
        raise DataError(
            f"{path}: column {column!r} has {int(empty.sum())} empty text(s) "
            f"(first: row {first + 2}, id {frame[ID].iloc[first]!r}); fill or drop them."
        )
    frame[TEXT] = texts.astype(str)


def _check_ids(frame: pd.DataFrame, path: Path, column: str) -> None:
    missing = frame[ID].isna()
    if missing.any():
        raise DataError(f"{path}: column {column!r} has {int(missing.sum())} empty id(s) "
                        f"(first: row {frame.index[missing][0] + 2}); give every row an id.")
    dup = frame[ID].duplicated()
    if dup.any():
        raise DataError(
            f"{path}: column {column!r} has {int(dup.sum())} duplicate id(s) (first: {frame[ID][dup].iloc[0]!r}); "
            f"ids must be unique."
        )


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the rows a run uses (id, text, target, in order, after max_rows): two runs
    share results only if they saw the same data, whatever the file is called."""
    digest = hashlib.sha256()
    for row_id, text, target in zip(frame[ID], frame[TEXT], frame[TARGET], strict=True):
        digest.update(f"{row_id}\x1f{text}\x1f{float(target)!r}\x1e".encode())
    return digest.hexdigest()


def _check_size(frame: pd.DataFrame, path: Path, n_folds: int) -> None:
    if len(frame) < n_folds:
        raise DataError(f"{path}: {len(frame)} row(s) cannot be split into cv.n_folds={n_folds} folds; use more rows or fewer folds.")


@dataclass
class CvData:
    """The checked rows of one CV run (with their `fold` column), where they came from, their fingerprint."""

    path: Path
    frame: pd.DataFrame
    fingerprint: str
