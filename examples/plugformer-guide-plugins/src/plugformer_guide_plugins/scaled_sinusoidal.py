"""Scaled sinusoidal absolute positions (as used with FLASH: Hua et al., 2022, "Transformer
Quality in Linear Time", arXiv:2202.10447): the fixed sinusoids of Vaswani et al. (2017) times
one scalar, added to the token embeddings through the ``embed`` capability.

``PE[p] = scale * [sin(p * f_0), ..., sin(p * f_{d/2-1}), cos(p * f_0), ..., cos(p * f_{d/2-1})]``
with ``f_i = base^(-2i/d)`` over the embedding width ``d`` (sines first, then cosines).
Implementations usually learn the scale; here it is a config value (``positional.scale``, null:
``1/sqrt(d)``), so the encoding owns no weights and can be selected on any model. Queries, keys
and scores are left unchanged (no rotation, no bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plugformer.core import PositionalConfig, PositionalDims, hookimpl


@dataclass
class ScaledSinusoidalConfig(PositionalConfig):
    name: str = "scaled_sinusoidal"
    scale: float | None = None  # None: 1/sqrt(hidden_size)
    base: float = 10000.0


class ScaledSinusoidal:
    """Fixed sine/cosine position vectors times a scalar, computed in float32."""

    def __init__(self, config: ScaledSinusoidalConfig, dims: PositionalDims) -> None:
        self.config, self.dims = config, dims
        d = dims.hidden_size
        self.scale = config.scale if config.scale is not None else 1 / math.sqrt(max(d, 1))

    def check(self) -> list[str]:
        problems = []
        if self.dims.hidden_size <= 0 or self.dims.hidden_size % 2:
            problems.append(f"needs an even hidden_size, got {self.dims.hidden_size}")
        if not self.config.base > 1:
            problems.append(f"positional.base must be > 1, got {self.config.base}")
        if not math.isfinite(self.scale):
            problems.append(f"positional.scale must be a finite number, got {self.scale}")
        return problems

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [B, S] int64 -> [B, S, hidden] float32
        d = self.dims.hidden_size
        i = torch.arange(0, d, 2, dtype=torch.float32, device=positions.device)  # [d/2]
        freq = self.config.base ** (-i / d)  # [d/2]
        angle = positions.to(torch.float32).unsqueeze(-1) * freq  # [B, S, d/2]
        return torch.cat((angle.sin(), angle.cos()), dim=-1) * self.scale  # [B, S, d]

    def prepare(self, positions: torch.Tensor) -> None:
        return None

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, state: None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "scaled_sinusoidal", ScaledSinusoidal, ScaledSinusoidalConfig)
