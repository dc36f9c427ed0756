"""(IA)^3-style output scaling (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is
Better and Cheaper than In-Context Learning", arXiv:2205.05638): each chosen layer learns one
scale per output feature, ``y = l * (x W^T) + b``, starting at ``l = 1`` (no change).

One vector per layer: for SmolLM2's k_proj, v_proj and down_proj that is 64,320 trainable
numbers, against 1.2 M for a rank-8 LoRA on q_proj and v_proj. Merged, ``W' = l[:, None] * W``
and the bias is kept, so the merged layer computes the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plugformer.core import AdapterConfig, AdapterDims, hookimpl


@dataclass
class IA3Config(AdapterConfig):
    name: str = "ia3"
    target_modules: Any = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    init: float = 1.0  # the starting scale (1: the adapter changes nothing until it trains)


class IA3Layer(nn.Module):
    """The scale vector of one layer."""

    def __init__(self, dims: AdapterDims, init: float) -> None:
        super().__init__()
        self.ia3_l = nn.Parameter(torch.full((dims.out_features,), float(init)))

    def forward(self, x: torch.Tensor, base_out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        # base_out [..., out] = x W^T + b: scale the x W^T part, keep the bias
        bias = getattr(base, "bias", None)
        plain = base_out if bias is None else base_out - bias.to(base_out.dtype)
        return base_out + (self.ia3_l - 1) * plain

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return self.ia3_l.view(-1, 1) * weight  # [out, in]


class IA3:
    def __init__(self, config: IA3Config, spec: Any = None) -> None:
        self.config = config

    def check(self) -> list[str]:
        init = self.config.init
        if not isinstance(init, (int, float)) or not 0 < init < float("inf"):
            return [f"adapter.init must be a positive number, got {init!r}"]
        return []

    def make(self, base: nn.Module, dims: AdapterDims, generator: torch.Generator) -> nn.Module:
        return IA3Layer(dims, self.config.init)  # nothing random to draw

    def peft_config(self) -> dict[str, Any]:
        return {"peft_type": "IA3"}  # saved with plugformer's own keys (PEFT's IA3 differs)


@hookimpl
def plugformer_register(registry):
    registry.register("adapter", "ia3", IA3, IA3Config)
