"""OmegaConf resolvers used by conf/: rates as multiples of model.lr, and the output root."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def _mul(*factors: float) -> float:
    out = 1.0
    for factor in factors:
        out *= float(factor)
    return out


def default_outputs() -> str:
    """FTSWEEP_OUTPUTS, else <launch dir>/outputs. Hydra's runtime.cwd is the launch dir in every
    job (also in joblib / submitit workers); before Hydra is set up (sweepers, the compose API)
    the process's cwd is."""
    if os.environ.get("FTSWEEP_OUTPUTS"):
        return os.path.abspath(os.environ["FTSWEEP_OUTPUTS"])
    from hydra.core.hydra_config import HydraConfig

    cwd = HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()
    return os.path.join(cwd, "outputs")


def tracking_uri_env(default: str) -> str:
    """$MLFLOW_TRACKING_URI when set and not empty (an empty one means unset), else `default`."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or default


for _name, _fn in (("mul", _mul), ("ftsweep_outputs", default_outputs), ("tracking_uri_env", tracking_uri_env)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
