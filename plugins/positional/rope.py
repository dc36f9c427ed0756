"""Rotary position embedding (Su et al., 2021, "RoFormer", arXiv:2104.09864).

Rotates pairs of query/key features by position-dependent angles ``pos * theta^(-2i/d)``.
``rotary_dim`` rotates only the first features of each head (partial rotary, as in GPT-NeoX);
``interleaved`` pairs neighbouring features (GPT-J) instead of the two halves (Llama, NeoX).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.positional import PositionalConfig, PositionalDims


@dataclass
class RoPEConfig(PositionalConfig):
    name: str = "rope"
    theta: float = 10000.0
    rotary_dim: int | None = None  # None: the whole head
    interleaved: bool = False


class RoPE(nn.Module):
    """Rotary position embedding applied to q and k."""

    def __init__(self, config: RoPEConfig, dims: PositionalDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.rotary_dim = config.rotary_dim if config.rotary_dim is not None else dims.head_dim
        half = max(self.rotary_dim // 2, 1)
        exponents = torch.arange(0, half, dtype=torch.float32) * 2 / max(self.rotary_dim, 1)
        inv_freq = 1.0 / (float(config.theta) ** exponents)  # [rd/2]
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def check(self) -> list[str]:
        reasons = []
        rd = self.rotary_dim
        if rd <= 0 or rd % 2 or rd > self.dims.head_dim:
            reasons.append(
                f"positional.rotary_dim={rd} must be even, positive and at most "
                f"head_dim={self.dims.head_dim}"
            )
        if not self.config.theta > 0:
            reasons.append(f"positional.theta={self.config.theta} must be positive")
        return reasons

    def prepare(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [B, S] -> cos, sin: [B, 1, S, rd/2] in float32
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [B, S, rd/2]
        return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)

    def _rotate_one(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [B, H, S, D]
        rd = self.rotary_dim
        rot, rest = x[..., :rd].float(), x[..., rd:]
        if self.config.interleaved:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]  # [B, H, S, rd/2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = rot[..., : rd // 2], rot[..., rd // 2 :]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((out.to(x.dtype), rest), dim=-1) if rest.shape[-1] else out.to(x.dtype)

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = state
        return self._rotate_one(q, cos, sin), self._rotate_one(k, cos, sin)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "rope", RoPE, RoPEConfig)
