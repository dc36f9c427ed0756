"""Root-mean-square layer norm (Zhang and Sennrich, 2019, "RMSNorm", arXiv:1910.07467).

``x / sqrt(mean(x^2) + eps) * weight``, computed in float32. Two dtype orders exist in the wild
and are kept apart because they round differently in bf16/fp16: Llama casts back to the input
dtype before multiplying by the weight; Gemma (``unit_offset``, its weight stored as an offset
from one: ``* (1 + weight)``) multiplies in float32 and casts after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.norm import NormConfig, NormDims


@dataclass
class RMSNormConfig(NormConfig):
    name: str = "rmsnorm"
    unit_offset: bool = False  # Gemma: scale by (1 + weight), in float32


class RMSNorm(nn.Module):
    """RMS normalisation with a learned per-feature scale."""

    def __init__(self, config: RMSNormConfig, dims: NormDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.eps = dims.eps
        self.unit_offset = config.unit_offset
        self.plain_rms = not config.unit_offset  # the decoder may fuse decode steps
        self.weight = nn.Parameter(
            torch.zeros(dims.dim) if config.unit_offset else torch.ones(dims.dim)
        )

    def check(self) -> list[str]:
        if not self.dims.eps > 0:
            return [f"norm eps={self.dims.eps} must be positive"]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., dim]
        if x.dtype == torch.float32 and not self.unit_offset:
            # one fused op, bit-equal to the lines below in float32 (tests/unit/test_parts.py)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x if x.dtype == torch.float32 else x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (xf * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * (xf if x.dtype == torch.float32 else xf.to(x.dtype))


@hookimpl
def plugformer_register(registry):
    registry.register("norm", "rmsnorm", RMSNorm, RMSNormConfig)
