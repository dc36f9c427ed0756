"""ScaleNorm (Nguyen and Salazar, 2019, "Transformers without Tears: Improving the
Normalization of Self-Attention", arXiv:1910.05895): one learned scalar ``g`` per norm.

``g * x / max(||x||, eps)`` over the last dimension, computed in float32 and cast back. The
paper initialises ``g`` at ``sqrt(dim)``; its weight is the tensor ``<place>.weight`` of shape
[1] (``layers.{i}.attn_norm.weight`` ...). It is not the plain RMSNorm, so it leaves the
``plain_rms`` capability at its default (False) and the engine's fused float32 decode steps
call this module instead of normalising themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import NormConfig, NormDims, hookimpl


@dataclass
class ScaleNormConfig(NormConfig):
    name: str = "scalenorm"


class ScaleNorm(nn.Module):
    """Scale the vector to length ``g``."""

    def __init__(self, config: ScaleNormConfig, dims: NormDims) -> None:
        super().__init__()
        self.dims = dims
        self.weight = nn.Parameter(torch.full((1,), math.sqrt(dims.dim)))  # g

    def check(self) -> list[str]:
        if not self.dims.eps > 0:
            return [f"norm eps={self.dims.eps} must be positive"]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., dim] -> [..., dim], same dtype
        xf = x.float()
        length = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp(min=self.dims.eps)
        return (xf * (self.weight.float() / length)).to(x.dtype)


@hookimpl
def plugformer_register(registry):
    registry.register("norm", "scalenorm", ScaleNorm, ScaleNormConfig)
