"""plugformer: a plugin-based modular engine for open large language models.

The stable Python API:

* :func:`compose` — Hydra overrides to a :class:`Config` of plain dataclasses;
* :class:`Engine` — ``Engine(config)`` or ``Engine.from_overrides([...])``, then
  ``engine.generate(...)`` and ``engine.logits(...)``;
* :func:`register` and :data:`hookimpl` — plugins defined in a user's own script;
* :func:`train` — a training run of a config (``plugformer.train(compose([...]))``), and
  :class:`Trainer` for step-by-step use.
"""

from typing import Any

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
    "Trainer",
    "UnknownNameError",
    "ValidationError",
    "__version__",
    "compose",
    "hookimpl",
    "register",
    "train",
]


def __getattr__(name: str) -> Any:
    # the training wing loads on first use: inference never imports it
    if name in ("train", "Trainer"):
        from plugformer.core.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'plugformer' has no attribute {name!r}")
