"""DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353):
the weight split into a magnitude ``m`` [out] and a direction ``W + s * B A``, normalised per
output row; ``m`` starts at the row norms of ``W``, so a new adapter changes nothing.

Forward, as PEFT computes it (the norm is treated as a constant, section 4.3 of the paper):
``y = base(x) + (m / ||W + s B A|| - 1) * (x W^T) + (m / ||W + s B A||) * s * B(A(x))``, with
``x`` after dropout and ``x W^T`` the base output without its bias. ``m`` is saved as PEFT's
``lora_magnitude_vector``; the config is PEFT's ``LoraConfig(use_dora=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.adapters.lowrank import LowRankAdapter, LowRankConfig, LowRankLayer
from plugformer.core.interfaces.adapter import AdapterDims, base_weight


@dataclass
class DoraConfig(LowRankConfig):
    name: str = "dora"


class DoraLayer(LowRankLayer):
    """LoRA's ``A`` and ``B`` plus the magnitude vector."""

    def __init__(self, dims: AdapterDims, r: int, scaling: float, dropout: float) -> None:
        super().__init__(dims, r, scaling, dropout)
        self.lora_magnitude_vector = nn.Parameter(torch.ones(dims.out_features))

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + s B A|| per output row [out], without a gradient."""
        with torch.no_grad():
            lora = self.lora_B.weight @ self.lora_A.weight  # [out, in]
            return torch.linalg.norm(weight + self.scaling * lora.to(weight.dtype), dim=1)

    def forward(self, x: torch.Tensor, base_out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        weight = base_weight(base, x.dtype)  # [out, in]
        scale = (self.lora_magnitude_vector / self._norm(weight)).view(1, -1)  # [1, out]
        if isinstance(self.dropout, nn.Identity) or not self.training:
            dropped = x  # no dropout: the base output is x W^T + b
            bias = getattr(base, "bias", None)
            plain = base_out if bias is None else base_out - bias.to(base_out.dtype)
        else:
            dropped = self.dropout(x)
            plain = F.linear(dropped, weight)
        return base_out + (scale - 1) * plain + scale * self.delta(dropped)

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        direction = weight + self.scaling * (self.lora_B.weight @ self.lora_A.weight)
        norm = torch.linalg.norm(direction, dim=1, keepdim=True)  # [out, 1]
        return direction * (self.lora_magnitude_vector.view(-1, 1) / norm)


class Dora(LowRankAdapter):
    """Builds :class:`DoraLayer` s: LoRA's, with the magnitude set from the base weight."""

    layer = DoraLayer
    peft_fields: dict[str, Any] = {"use_dora": True}

    def finish(self, layer: nn.Module, base: nn.Module) -> None:
        assert isinstance(layer, DoraLayer)
        with torch.no_grad():
            layer.lora_magnitude_vector.copy_(layer._norm(base_weight(base)))


@hookimpl
def plugformer_register(registry):
    registry.register("adapter", "dora", Dora, DoraConfig)
