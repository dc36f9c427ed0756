"""Plain two-layer feed-forward block (Vaswani et al., 2017, "Attention Is All You Need",
arXiv:1706.03762).

``down(act(up(x)))``: GELU in GPT-2, BLOOM and Falcon. The activation and biases come from the
model spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.mlp import ACTIVATIONS, MLPConfig, MLPDims, activation


@dataclass
class PlainConfig(MLPConfig):
    name: str = "plain"


class PlainMLP(nn.Module):
    """Up projection, activation, down projection."""

    def __init__(self, config: PlainConfig, dims: MLPDims) -> None:
        super().__init__()
        self.dims = dims
        h, f, bias = dims.hidden_size, dims.intermediate_size, dims.bias
        self.up = nn.Linear(h, f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)

    def check(self) -> list[str]:
        if self.dims.activation not in ACTIVATIONS:
            return [f"activation {self.dims.activation!r} is not one of {', '.join(ACTIVATIONS)}"]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, hidden] -> [B, S, hidden]
        return self.down(activation(self.dims.activation)(self.up(x)))


@hookimpl
def plugformer_register(registry):
    registry.register("mlp", "plain", PlainMLP, PlainConfig)
