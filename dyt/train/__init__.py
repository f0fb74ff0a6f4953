"""The suite's trainer: `train.py` calls `preflight` and then `run` under Hydra."""
from .cli import preflight, register_resolvers
from .config import register_schemas
from .run import run

register_schemas()
register_resolvers()

__all__ = ["preflight", "run"]
