from ftsweep.sweep.callback import SweepCallback  # conf/config.yaml: _target_: ftsweep.sweep.SweepCallback

__all__ = ["SweepCallback"]
