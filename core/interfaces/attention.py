"""The attention interface: the kernel that turns queries, keys and values into outputs.

Projections (q/k/v/o) belong to the decoder; an attention plugin only computes
``softmax(q k^T * scale + bias) v`` for its head layout, so swapping attention never touches
weights.

A kernel may also have a ``window`` attribute (``int | None``, optional: read with ``getattr``):
a query at position i then sees only keys at positions j with ``i - j < window`` (a sliding
window, Mistral). The decoder builds that into ``bias`` from positions, with the model's own
``spec.sliding_window`` (the smaller of the two wins), so it holds through the KV cache and the
kernel itself needs no window code.

A kernel may also declare ``softmax_attention = True`` (optional, read with ``getattr``): it
computes exactly ``softmax(q k^T * scale + bias) v`` with ``scale = dims.scale`` and nothing
else. The decoder may then run float32 CPU decode steps of rotary layers through its fused path
(:mod:`plugformer.core.model.decode_step`) instead of calling the kernel; a kernel that changes
the arithmetic (soft-capping, another normalisation) must leave it unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class AttentionConfig:
    """Base config of every attention plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class AttentionDims:
    """The head layout an attention kernel is built for."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float


@runtime_checkable
class Attention(Protocol):
    """Built by ``builder(config: AttentionConfig, dims: AttentionDims)``."""

    def check(self) -> list[str]:
        """Reasons this kernel cannot run with its dims (empty when it can)."""
        ...

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Attend.

        q: [B, Hq, S, D]; k, v: [B, Hkv, T, D]; bias: [B or 1, Hq or 1, S, T] additive float
        mask (``-inf`` where a key is hidden, ALiBi terms otherwise). Returns [B, Hq, S, D].
        """
        ...
