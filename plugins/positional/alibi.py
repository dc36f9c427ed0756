"""Attention with linear biases (Press et al., 2022, "Train Short, Test Long", arXiv:2108.12409).

Adds ``-m_h * (i - j)`` to the score of query position i and key position j. The head slopes
are the paper's geometric sequence ``2^(-8/n * h)`` for h = 1..n; when n is not a power of two,
the slopes of the closest smaller power of two are followed by every other slope of the next
power of two (the paper's reference code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.positional import PositionalConfig, PositionalDims


@dataclass
class ALiBiConfig(PositionalConfig):
    name: str = "alibi"
    max_bias: float = 8.0  # the paper's 8: the last head of 2^k heads gets slope 2^-8


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> torch.Tensor:
    """The per-head slopes m_h, float32 [num_heads]."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-max_bias / n)
        return [start ** (h + 1) for h in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(nn.Module):
    """Linear distance penalties added to attention scores."""

    def __init__(self, config: ALiBiConfig, dims: PositionalDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.slopes: torch.Tensor
        self.register_buffer(
            "slopes", alibi_slopes(max(dims.num_heads, 1), config.max_bias), persistent=False
        )

    def check(self) -> list[str]:
        if not self.config.max_bias > 0:
            return [f"positional.max_bias={self.config.max_bias} must be positive"]
        return []

    def prepare(self, positions: torch.Tensor) -> None:
        return None

    def rotate(self, q: torch.Tensor, k: torch.Tensor, state: None):
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        # q_pos: [B, S], k_pos: [B, T] -> [B, H, S, T]
        distance = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).to(torch.float32)  # [B, S, T]
        return -self.slopes.view(1, -1, 1, 1) * distance.unsqueeze(1)


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "alibi", ALiBi, ALiBiConfig)
