"""Layer normalisation (Ba, Kiros and Hinton, 2016, "Layer Normalization", arXiv:1607.06450).

``(x - mean) / sqrt(var + eps) * weight + bias`` over the last dimension: PyTorch's
``F.layer_norm``, as GPT-2, BLOOM and Falcon use it. ``bias=false`` drops the additive term
(OLMo, some GPT-NeoX variants).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.norm import NormConfig, NormDims


@dataclass
class LayerNormConfig(NormConfig):
    name: str = "layernorm"
    bias: bool = True


class LayerNorm(nn.Module):
    """Mean-and-variance normalisation with a learned scale (and shift)."""

    def __init__(self, config: LayerNormConfig, dims: NormDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.weight = nn.Parameter(torch.ones(dims.dim))
        self.bias = nn.Parameter(torch.zeros(dims.dim)) if config.bias else None

    def check(self) -> list[str]:
        if not self.dims.eps > 0:
            return [f"norm eps={self.dims.eps} must be positive"]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., dim]
        return F.layer_norm(x, (self.dims.dim,), self.weight, self.bias, self.dims.eps)


@hookimpl
def plugformer_register(registry):
    registry.register("norm", "layernorm", LayerNorm, LayerNormConfig)
