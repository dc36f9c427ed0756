"""The positional-encoding interface: rotations of q/k (RoPE) and/or additive biases (ALiBi)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class PositionalConfig:
    """Base config of every positional plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class PositionalDims:
    """What a positional encoding is built for."""

    num_heads: int
    head_dim: int
    max_seq_len: int


@runtime_checkable
class PositionalEncoding(Protocol):
    """Built by ``builder(config: PositionalConfig, dims: PositionalDims)``.

    The decoder calls :meth:`prepare` and :meth:`bias` once per forward pass and
    :meth:`rotate` once per layer.
    """

    def check(self) -> list[str]:
        """Reasons this encoding cannot run with its dims (empty when it can)."""
        ...

    def prepare(self, positions: torch.Tensor) -> Any:
        """Per-forward state for :meth:`rotate` from positions [B, S] (int64)."""
        ...

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode positions into q: [B, Hq, S, D] and the new keys k: [B, Hkv, S, D]."""
        ...

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """Additive attention bias [B, H, S, T] for q_pos [B, S] and k_pos [B, T], or None."""
        ...
