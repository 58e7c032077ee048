"""ftsweep: Hydra sweeps of Transformer fine-tuning techniques for text regression."""

from ftsweep.config import resolvers as _resolvers  # noqa: F401  (registers ${mul:...} before any compose)

__version__ = "0.1.0"
