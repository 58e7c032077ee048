"""ftsweep's grid sweeper plugin (hydra/sweeper=basic): Hydra's basic sweeper whose dead job
processes are one line, not a traceback."""
