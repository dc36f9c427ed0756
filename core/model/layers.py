"""Small building blocks of the generic decoder: norms and MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core.model.spec import ModelSpec


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang and Sennrich, 2019, arXiv:1910.07467), computed in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., dim]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(spec: ModelSpec, dim: int | None = None) -> nn.Module:
    dim = dim or spec.hidden_size
    if spec.norm == "rmsnorm":
        return RMSNorm(dim, spec.norm_eps)
    return nn.LayerNorm(dim, eps=spec.norm_eps, bias=spec.norm_bias)


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return F.relu(x)


class MLP(nn.Module):
    """Feed-forward block: gated (SwiGLU / GeGLU, Shazeer 2020, arXiv:2002.05202) or plain."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.act = spec.activation
        h, f, bias = spec.hidden_size, spec.intermediate_size, spec.mlp_bias
        self.gate = nn.Linear(h, f, bias=bias) if spec.mlp == "gated" else None
        self.up = nn.Linear(h, f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, hidden] -> [B, S, hidden]
        if self.gate is not None:
            return self.down(activation(self.act, self.gate(x)) * self.up(x))
        return self.down(activation(self.act, self.up(x)))
