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
from plugformer.core.version import __version__

#: public name -> the module it lives in; loaded on first use (PEP 562), so that
#: ``import plugformer`` (and ``plugformer --help``) does not import torch
_LAZY: dict[str, str] = {
    "CheckpointError": "plugformer.core.errors",
    "Config": "plugformer.core.config",
    "ConfigError": "plugformer.core.errors",
    "Engine": "plugformer.core.engine",
    "Generation": "plugformer.core.engine",
    "ModelConfig": "plugformer.core.config",
    "PlugformerError": "plugformer.core.errors",
    "PluginError": "plugformer.core.errors",
    "RefusedError": "plugformer.core.errors",
    "Trainer": "plugformer.core.train.trainer",
    "UnknownNameError": "plugformer.core.errors",
    "ValidationError": "plugformer.core.errors",
    "compose": "plugformer.core.config",
    "register": "plugformer.core.loader",
    "train": "plugformer.core.train.trainer",
}

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
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'plugformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
