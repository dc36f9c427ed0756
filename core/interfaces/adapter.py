"""The adapter interface: trainable low-rank (or other) updates over a frozen model's linear
layers (``adapter=lora``, ``adapter=dora``).

The core chooses the layers (``adapter.target_modules``: PEFT-style short names such as
``q_proj,v_proj`` matched against the end of a module's path, ``all-linear``, or globs such as
``layers.*.attn.w?`` matched against the whole path; each against the checkpoint's Hugging Face
module names and against plugformer's own), freezes the base and wraps each chosen layer. The
adapter plugin is asked once per chosen layer for an *adapter layer*: a small ``nn.Module``
holding its trainable tensors, whose ``forward(x, base_out, base)`` returns the layer's new
output from the input, the frozen base layer's output and the base layer itself (for a weight-
dependent update such as DoRA's).

The adapter layer's ``state_dict`` names are PEFT's suffixes (``lora_A.weight``,
``lora_B.weight``, ``lora_magnitude_vector``), so an adapter saves as
``base_model.model.<HF module path>.<suffix>`` in ``adapter_model.safetensors`` and the adapter's
``peft_config()`` fills ``adapter_config.json``: a PEFT adapter directory, both ways.

Shapes: ``x`` [..., in_features] -> out [..., out_features], ``base_out`` [..., out_features].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class AdapterConfig:
    """Base config of every adapter plugin; ``name`` is its registry name.

    ``path``: a saved adapter directory to load (its own ``adapter_config.json`` then says
    which plugin and which layers; ``adapter=auto`` with no path means no adapter).
    ``target_modules``: which linear layers get an adapter (see the module docstring)."""

    name: str = ""
    path: str | None = None
    # a list of names / globs, or one string: all-linear, or a regex over whole paths (PEFT's)
    target_modules: Any = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass(frozen=True)
class AdapterDims:
    """The linear layer an adapter layer is made for."""

    in_features: int
    out_features: int
    path: str  # the module's path in the model (HF name where known), for messages


@runtime_checkable
class AdapterLayer(Protocol):
    """One chosen layer's trainable part (an ``nn.Module``; its parameters train)."""

    def forward(self, x: torch.Tensor, base_out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """The adapted output [..., out] from ``x`` [..., in] and the frozen ``base_out``."""
        ...

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The base ``weight`` [out, in] with this update folded in (``plugformer merge``):
        ``x @ merged.T + bias`` equals :meth:`forward` (dropout off)."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """Built by ``builder(config: AdapterConfig, spec: ModelSpec)``."""

    def check(self) -> list[str]:
        """Reasons this adapter cannot be used (empty when it can)."""
        ...

    def make(self, base: nn.Module, dims: AdapterDims, generator: torch.Generator) -> nn.Module:
        """A new :class:`AdapterLayer` for the linear layer ``base`` (dense or quantized; read
        its weight with :func:`base_weight`), initialised from ``generator`` (float32, on the
        CPU; the core moves it)."""
        ...

    def peft_config(self) -> dict[str, Any]:
        """This adapter's fields of PEFT's ``adapter_config.json`` (``peft_type``, ``r``,
        ``lora_alpha`` ...); the core adds ``target_modules`` and the fixed fields."""
        ...


def base_weight(base: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [out, in] of a linear layer an adapter wraps: ``nn.Linear``'s own, or a
    quantized layer's dequantized (a temporary copy: use it and let it go)."""
    dequantize = getattr(base, "dequantize", None)
    if callable(dequantize):
        dense: torch.Tensor = dequantize(dtype)
        return dense
    weight = base.weight
    assert isinstance(weight, torch.Tensor)
    return weight.to(dtype)
