"""The positional-encoding interface: rotations of q/k (RoPE), additive attention biases
(ALiBi), and/or vectors added to the token embeddings (absolute positions: learned as in GPT-2,
or fixed sinusoids as in Vaswani et al. 2017) through the optional ``embed`` capability.

A positional encoding that owns weights (learned positions) is a ``torch.nn.Module``; the
decoder registers it once, as ``positional``, so its tensors are named
``positional.<name>`` (``positional.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability


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
    hidden_size: int = 0  # width of the token embeddings (for ``embed``); 0: not given


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


#: Optional capabilities of a positional encoding (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "embed": Capability(
        None,
        "method (positions [B, S] int64, >= 0) -> Tensor [B, S, hidden_size]: absolute "
        "position vectors added to the token embeddings (after embedding_scale, before the "
        "embedding norm), built for dims.hidden_size.",
    ),
}


class PositionalBase(torch.nn.Module):
    """What a positional encoding does by default: no per-forward state, no rotation of q/k,
    no attention bias, nothing added to the embeddings. Subclass it and override what your
    encoding changes (``embed`` alone for absolute positions), and ``check``."""

    def check(self) -> list[str]:
        return []

    def prepare(self, positions: torch.Tensor) -> None:
        return None

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None
