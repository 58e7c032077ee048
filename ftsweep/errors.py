"""User-facing errors: each carries one line that says what is wrong and how to fix it."""


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
