"""The quantizer interface: rewrites a model's linear layers to quantized ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class QuantConfig:
    """Base config of every quantizer; ``name`` is its registry name."""

    name: str = ""


@runtime_checkable
class Quantizer(Protocol):
    """Built by ``builder(config: QuantConfig, spec: ModelSpec)``."""

    def check(self) -> list[str]:
        """Reasons this quantizer cannot handle the model (e.g. a group size that does not
        divide a layer's input features)."""
        ...

    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        """Return the quantized model; ``calibration`` is a list of token-id tensors [1, S]."""
        ...
