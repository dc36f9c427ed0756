"""The ``adapter`` config applied to a built model: the adapter saved at ``adapter.path``, a
new one of ``adapter=NAME`` (for training), or none (``adapter=auto`` without a path)."""

from __future__ import annotations

from typing import Any

from torch import nn

from plugformer.core.adapters import peft
from plugformer.core.adapters.attach import Attached, attach
from plugformer.core.adapters.targets import hf_module_names
from plugformer.core.config import AUTO
from plugformer.core.errors import ConfigError

#: what ``generate(adapter=...)`` names for "the base model alone"
NO_ADAPTER = "none"


def wanted(config: Any) -> bool:
    """Whether the config asks for an adapter."""
    return config.adapter.path is not None or config.adapter.name != AUTO


def check_composition(config: Any) -> None:
    """Refuse what adapters cannot combine with, before anything loads."""
    if not wanted(config):
        return
    if config.fuse_projections:
        raise ConfigError(
            "adapter: fuse_projections joins the layers an adapter wraps; leave it off (or "
            "merge the adapter first: plugformer merge)"
        )
    if config.parallel.name == "fsdp":
        raise ConfigError(
            "adapter: parallel=fsdp does not shard adapters yet; use parallel=ddp (the frozen "
            "base is replicated, only the adapter's gradients are reduced)"
        )
    if config.parallel.name in ("tensor", "pipeline"):
        raise ConfigError(
            f"adapter: parallel={config.parallel.name} does not split adapters yet; use "
            "parallel=single (or merge the adapter first: plugformer merge)"
        )


def apply(
    model: nn.Module, registry: Any, spec: Any, opened: Any, config: Any, seed: int = 0
) -> Attached | None:
    """Attach ``config.adapter`` to ``model`` (see the module docstring); None without one."""
    a = config.adapter
    if not wanted(config):
        return None
    names = hf_module_names(model, opened.checkpoint, opened.family, spec)
    if a.path is not None:
        attached = peft.load(model, registry, spec, a.path, names)
        if a.name not in (AUTO, attached.config.name):
            raise ConfigError(
                f"adapter={a.name}, but {a.path} holds a {attached.config.name} adapter "
                f"(leave adapter= out, or use adapter={attached.config.name})"
            )
        return attached
    return attach(model, registry.build("adapter", a, spec), a, names, seed=seed)
