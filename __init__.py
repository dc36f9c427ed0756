"""plugformer: a plugin-based modular engine for open large language models.

The stable Python API:

* :func:`compose` — Hydra overrides to a :class:`Config` of plain dataclasses;
* :class:`Engine` — ``Engine(config)`` or ``Engine.from_overrides([...])``, then
  ``engine.generate(...)`` and ``engine.logits(...)``;
* :func:`register` and :data:`hookimpl` — plugins defined in a user's own script.
"""

from plugformer.core import CONTRACT_VERSION, hookimpl
from plugformer.core.config import Config, ModelConfig, compose
from plugformer.core.engine import Engine, Generation
from plugformer.core.errors import (
    CheckpointError,
    ConfigError,
    PlugformerError,
    PluginError,
    RefusedError,
    UnknownNameError,
    ValidationError,
)
from plugformer.core.loader import register
from plugformer.core.version import __version__

__all__ = [
    "CONTRACT_VERSION",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Engine",
    "Generation",
    "ModelConfig",
    "PlugformerError",
    "PluginError",
    "RefusedError",
    "UnknownNameError",
    "ValidationError",
    "__version__",
    "compose",
    "hookimpl",
    "register",
]
