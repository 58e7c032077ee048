"""OmegaConf resolvers used by conf/: rates written as multiples of model.lr."""

from omegaconf import OmegaConf


def _mul(*factors: float) -> float:
    out = 1.0
    for factor in factors:
        out *= float(factor)
    return out


if not OmegaConf.has_resolver("mul"):
    OmegaConf.register_new_resolver("mul", _mul)
