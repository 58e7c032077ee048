"""hydra-optuna-sweeper's class path, answered by ftsweep's sweeper, so configs written for that
plugin (lightning-hydra-template's hparams_search) work unchanged. The two cannot be installed
together anyway: that plugin pins optuna<3, ftsweep needs optuna>=4."""
