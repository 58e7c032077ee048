"""ftsweep's Hydra sweeper plugin: Optuna search with fold-level pruning (hydra/sweeper=optuna)."""
