"""Sparse mixture of gated experts (Jiang et al., 2024, "Mixtral of Experts", arXiv:2401.04088;
Shazeer et al., 2017, arXiv:1701.06538).

A linear router scores ``num_experts`` experts per token; the softmax over those scores (in
float32) is cut to its ``top_k`` largest and, as Mixtral does, renormalised to sum to one
(``normalize``); each chosen expert is a gated MLP (SwiGLU with ``silu``) and the token's output
is the weighted sum of its experts' outputs. Experts run on their own tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.mlp import ACTIVATIONS, MLPConfig, MLPDims, activation


@dataclass
class MoEConfig(MLPConfig):
    name: str = "moe"
    num_experts: int = 8
    top_k: int = 2
    normalize: bool = True  # renormalise the top-k probabilities to sum to one (Mixtral)


class Expert(nn.Module):
    """One gated expert: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, dims: MLPDims) -> None:
        super().__init__()
        h, f, bias = dims.hidden_size, dims.intermediate_size, dims.bias
        self.gate = nn.Linear(h, f, bias=bias)
        self.up = nn.Linear(h, f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)
        self.act = dims.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, hidden] -> [N, hidden]
        return self.down(activation(self.act)(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Top-k routed mixture of gated experts."""

    def __init__(self, config: MoEConfig, dims: MLPDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        experts = max(int(config.num_experts), 1)
        self.router = nn.Linear(dims.hidden_size, experts, bias=False)
        self.experts = nn.ModuleList(Expert(dims) for _ in range(experts))

    def check(self) -> list[str]:
        reasons = []
        n, k = self.config.num_experts, self.config.top_k
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            reasons.append(f"mlp.num_experts={n!r} must be a positive integer")
        elif not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
            reasons.append(f"mlp.top_k={k!r} must be an integer in [1, num_experts={n}]")
        if self.dims.activation not in ACTIVATIONS:
            reasons.append(
                f"activation {self.dims.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )
        return reasons

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, hidden] -> [B, S, hidden]
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, hidden]
        probs = torch.softmax(self.router(flat).float(), dim=-1)  # [N, E]
        weights, chosen = torch.topk(probs, self.config.top_k, dim=-1)  # [N, K]
        if self.config.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(flat)
        hit = torch.zeros(len(self.experts), dtype=torch.bool, device=x.device)
        hit[chosen.flatten()] = True
        for e in hit.nonzero().flatten().tolist():
            token, slot = torch.where(chosen == e)  # tokens routed to expert e, and which pick
            y = self.experts[e](flat[token]) * weights[token, slot, None]  # [n, hidden] f32
            out.index_add_(0, token, y.to(out.dtype))
        return out.reshape(shape)


@hookimpl
def plugformer_register(registry):
    registry.register("mlp", "moe", MoE, MoEConfig)
