"""User-facing errors: each carries one line that says what is wrong and how to fix it."""

from __future__ import annotations

import sys
from typing import NoReturn


class FtsweepError(Exception):
    """A problem with the user's input or config, reported without a traceback (exit code 2)."""

    exit_code = 2


class ConfigError(FtsweepError):
    """An impossible or inconsistent config, caught before any weights or data load."""


class DataError(FtsweepError):
    """A data file that cannot be used as given."""


class ModelError(FtsweepError):
    """A model that cannot be loaded or whose layers cannot be found."""


class TrainingError(FtsweepError):
    """Training cannot go on (a non-finite loss, say)."""


class RegistryError(FtsweepError):
    """The run finished and is kept, but its model could not be registered (not an input error)."""

    exit_code = 1


def exit_with(problem: object, exit_code: int | None = None, command: str = "ftsweep") -> NoReturn:
    """The one way a command stops on a problem it can explain: `<command>: error: <one line>` on
    stderr, then `exit_code` (default: the error's own, else 2 for the user's input; 1 where work
    failed). Callers decide when (FTSWEEP_DEBUG=1 re-raises before this for a traceback)."""
    if exit_code is None:
        exit_code = problem.exit_code if isinstance(problem, FtsweepError) else 2
    print(f"{command}: error: {problem}", file=sys.stderr, flush=True)
    sys.exit(exit_code)
