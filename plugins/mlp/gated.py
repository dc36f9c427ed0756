"""Gated feed-forward block (Shazeer, 2020, "GLU Variants Improve Transformer", arXiv:2002.05202).

``down(act(gate(x)) * up(x))``: SwiGLU with ``silu`` (Llama, Mistral, Qwen2, Phi-3), GeGLU with
``gelu_tanh`` (Gemma). The activation and biases come from the model spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.mlp import (
    ACTIVATIONS,
    MLPConfig,
    MLPDims,
    activate_temporary,
    activation,
)
from plugformer.core.model.fuse import concat_linears


@dataclass
class GatedConfig(MLPConfig):
    name: str = "gated"


class GatedMLP(nn.Module):
    """Gate and up projections, their elementwise product, down projection."""

    def __init__(self, config: GatedConfig, dims: MLPDims) -> None:
        super().__init__()
        self.dims = dims
        h, f, bias = dims.hidden_size, dims.intermediate_size, dims.bias
        self.gate = nn.Linear(h, f, bias=bias)
        self.up = nn.Linear(h, f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)
        self.act = ACTIVATIONS.get(dims.activation)
        self.gate_up: nn.Module | None = None  # set by fuse_projections()

    def fuse_projections(self) -> bool:
        """Replace gate and up by one layer (see :mod:`plugformer.core.model.fuse`)."""
        fused = concat_linears([self.gate, self.up])
        if fused is None:
            return False
        self.gate_up = fused
        del self.gate, self.up
        return True

    def check(self) -> list[str]:
        if self.act is None:
            return [f"activation {self.dims.activation!r} is not one of {', '.join(ACTIVATIONS)}"]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, hidden] -> [B, S, hidden]
        if self.gate_up is not None:
            g, u = self.gate_up(x).chunk(2, dim=-1)  # [B, S, 2 * ffn] -> two [B, S, ffn]
        else:
            g, u = self.gate(x), self.up(x)
        if torch.is_grad_enabled():
            return self.down(activation(self.dims.activation)(g) * u)
        # inference: g is this call's own temporary; act(g) * u in place, the same values
        return self.down(activate_temporary(self.dims.activation, g).mul_(u))


@hookimpl
def plugformer_register(registry):
    registry.register("mlp", "gated", GatedMLP, GatedConfig)
