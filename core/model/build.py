"""The decoder's registry-made parts: the MLP and norm a spec names, as factories.

The decoder never imports a plugin. Whoever builds it (the engine) resolves the parts through
its registry with :func:`build_parts` and passes them in.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plugformer.core.errors import ConfigError, UnknownNameError
from plugformer.core.interfaces.mlp import MLPDims
from plugformer.core.interfaces.norm import NormDims
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.registry import Registry


@dataclass
class Parts:
    """Factories of the modules a decoder needs several of; each call makes a fresh module
    (on the current default device, so a decoder built under ``torch.device("meta")`` gets
    meta parts)."""

    mlp: Callable[[], nn.Module]  # one MLP (dense or mixture of experts) per layer
    norm: Callable[[int], nn.Module]  # a norm over that many features


def component_config(
    registry: Registry, kind: str, name: str, args: dict[str, Any] | None, where: str
) -> Any:
    """The config of the ``kind`` entry ``name`` with fields ``args``; an unknown name or
    field is a :class:`ConfigError` naming ``where.<kind>`` / ``where.<kind>_args``."""
    try:
        entry = registry.get(kind, name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{where}.{kind}", name, exc.valid) from None
    fields = {f.name for f in dataclasses.fields(entry.config)} - {"name"}
    args = dict(args or {})
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ConfigError(
            f"{where}.{kind}_args: {kind} {name!r} has no field(s) {', '.join(unknown)} "
            f"(fields: {', '.join(sorted(fields)) or 'none'})"
        )
    return entry.config(**args)


def build_parts(registry: Registry, spec: ModelSpec, where: str = "model.spec") -> Parts:
    """The MLP and norm factories for ``spec``. Each plugin is built once here on the meta
    device, so a refusal (its ``check()`` reasons) comes now, before any weights exist."""
    mlp_config = component_config(registry, "mlp", spec.mlp, spec.mlp_args, where)
    norm_config = component_config(registry, "norm", spec.norm, spec.norm_args, where)
    mlp_dims = MLPDims(spec.hidden_size, spec.intermediate_size, spec.activation, spec.mlp_bias)

    def mlp() -> nn.Module:
        module: nn.Module = registry.build("mlp", mlp_config, mlp_dims)
        return module

    def norm(dim: int) -> nn.Module:
        module: nn.Module = registry.build("norm", norm_config, NormDims(dim, spec.norm_eps))
        return module

    with on_meta():
        mlp()
        norm(spec.hidden_size)
    return Parts(mlp, norm)


_INITS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_",
          "xavier_uniform_", "xavier_normal_")  # fmt: skip


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device (shapes only) without running their random
    initialisation: on meta tensors those go through ``torch._refs``, whose first use imports
    ``torch._dynamo`` (sympy, triton: ~170 MB resident) for nothing."""
    saved = {name: getattr(nn.init, name) for name in _INITS}
    for name in _INITS:
        setattr(nn.init, name, _keep)
    try:
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor
