"""`_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper` runs ftsweep's sweeper."""

from hydra_plugins.ftsweep_optuna_sweeper.optuna_sweeper import OptunaSweeper as _FtsweepOptunaSweeper


class OptunaSweeper(_FtsweepOptunaSweeper):
    """Hydra registers plugins by module and class name: this is the name such configs use."""
