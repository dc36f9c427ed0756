"""Sinusoidal absolute positions (Vaswani et al., 2017, "Attention Is All You Need",
arXiv:1706.03762, section 3.5).

``PE[p, 2i] = sin(p / base^(2i/d))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d))`` over the
embedding width d, added to the token embeddings; fixed (no weights), so any context length
works. Queries, keys and scores are left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import PositionalBase, PositionalConfig, PositionalDims, hookimpl


@dataclass
class SinusoidalConfig(PositionalConfig):
    name: str = "sinusoidal"
    base: float = 10000.0  # the paper's 10000


class Sinusoidal(PositionalBase):
    """The paper's fixed sine/cosine position vectors, computed in float32."""

    def __init__(self, config: SinusoidalConfig, dims: PositionalDims) -> None:
        super().__init__()
        self.config, self.dims = config, dims

    def check(self) -> list[str]:
        problems = []
        if self.dims.hidden_size <= 0 or self.dims.hidden_size % 2:
            problems.append(f"needs an even hidden_size, got {self.dims.hidden_size}")
        if not self.config.base > 1:
            problems.append(f"positional.base must be > 1, got {self.config.base}")
        return problems

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [B, S] -> [B, S, hidden] (float32)
        d = self.dims.hidden_size
        i = torch.arange(0, d, 2, dtype=torch.float32, device=positions.device)  # [d/2]
        inv = self.config.base ** (-i / d)  # [d/2]
        angle = positions.to(torch.float32).unsqueeze(-1) * inv  # [B, S, d/2]
        return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)  # sin, cos pairs


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "sinusoidal", Sinusoidal, SinusoidalConfig)
