"""Adapters on a model: attach a new one, list them, fold them into the weights.

A model with adapters keeps an :class:`Adapters` record (its :class:`Routing` and, per adapter
name, the adapter object and the layers it wraps); every chosen linear layer becomes an
:class:`~plugformer.core.adapters.layer.AdaptedLinear` holding one adapter layer per name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plugformer.core.adapters.layer import AdaptedLinear, Routing
from plugformer.core.adapters.targets import select
from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.adapter import AdapterDims, base_weight
from plugformer.core.quant.linear import swap_module

_ATTR = "_plugformer_adapters"


@dataclass
class Attached:
    """One adapter on a model."""

    adapter: Any  # the plugin's Adapter object
    config: Any  # its AdapterConfig
    paths: list[str]  # plugformer paths of the layers it wraps
    hf_names: dict[str, str]  # plugformer path -> HF module path, for saving


@dataclass
class Adapters:
    """The adapters of one model, and how they are routed."""

    routing: Routing = field(default_factory=Routing)
    by_name: dict[str, Attached] = field(default_factory=dict)


def adapters_of(model: nn.Module) -> Adapters:
    """The model's adapter record (an empty one, attached now, if it has none)."""
    found = model.__dict__.get(_ATTR)
    if found is None:
        found = Adapters()
        model.__dict__[_ATTR] = found
    assert isinstance(found, Adapters)
    return found


def attach(
    model: nn.Module,
    adapter: Any,
    config: Any,
    hf_names: dict[str, str],
    name: str = "default",
    seed: int = 0,
) -> Attached:
    """Wrap the layers ``config.target_modules`` names with new adapter layers of ``adapter``
    under ``name`` (initialised from ``seed``, in float32 on the base's device); the rest of
    the model is untouched. Returns the record of the new adapter."""
    record = adapters_of(model)
    if name in record.by_name:
        raise ConfigError(f"adapter: the model already has an adapter named {name!r}")
    paths = select(model, config.target_modules, hf_names, "adapter.target_modules")
    generator = torch.Generator().manual_seed(seed)
    for path in paths:
        module = model.get_submodule(path)
        if not isinstance(module, AdaptedLinear):
            module = AdaptedLinear(module, record.routing)
            swap_module(model, path, module)
        base = module.base
        sizes = int(base.in_features), int(base.out_features)
        dims = AdapterDims(*sizes, hf_names.get(path, path))
        layer = adapter.make(base, dims, generator)
        device = next(iter(base.buffers()), None)
        module.adapters[name] = layer.to(device.device if device is not None else "cpu")
    attached = Attached(adapter, config, paths, dict(hf_names))
    record.by_name[name] = attached
    if not record.routing.active:
        record.routing.active = [name]
    return attached


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The parameters of adapter ``name`` by their path in the model."""
    marker = f".adapters.{name}."
    return {n: p for n, p in model.named_parameters() if marker in n}


def merge(
    model: nn.Module, names: list[str] | None = None, dtype: torch.dtype = torch.float32
) -> int:
    """Fold adapters (``names``; default: the active ones) into their base weights and put
    plain ``nn.Linear`` layers back (a quantized base becomes dense, in ``dtype``). Returns the
    number of layers merged; the model then has no adapters."""
    record = adapters_of(model)
    names = list(record.routing.active if names is None else names)
    merged = 0
    for path, module in list(model.named_modules()):
        if not isinstance(module, AdaptedLinear):
            continue
        base = module.base
        with torch.no_grad():
            weight = base_weight(base)  # [out, in] float32
            for name in names:
                if name in module.adapters:
                    weight = module.adapters[name].merged_weight(weight)
                    merged += 1
            bias = getattr(base, "bias", None)
            out_dtype = base.weight.dtype if isinstance(base, nn.Linear) else dtype
            dense = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            dense = dense.to(device=weight.device, dtype=out_dtype)
            dense.weight.copy_(weight)
            if bias is not None:
                dense.bias.copy_(bias)
        swap_module(model, path, dense)
    model.__dict__.pop(_ATTR, None)
    return merged
