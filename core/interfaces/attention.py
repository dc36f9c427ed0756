"""The attention interface: the kernel that turns queries, keys and values into outputs.

Projections (q/k/v/o) belong to the decoder; an attention plugin only computes
``softmax(q k^T * scale + bias) v`` for its head layout, so swapping attention never touches
weights.

A kernel may declare the optional capabilities of :data:`CAPABILITIES` by setting them as
attributes (``self.window = 4096``); unset, each has its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability


@dataclass
class AttentionConfig:
    """Base config of every attention plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class AttentionDims:
    """The head layout an attention kernel is built for."""

    num_heads: int  # query heads this kernel computes (a rank's share under tensor parallel)
    num_kv_heads: int
    head_dim: int
    scale: float  # the softmax scale: the model's attention_scale or 1/sqrt(head_dim)
    max_seq_len: int = 0  # the context the model runs under (T <= max_seq_len); 0: not given


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


#: Optional capabilities of an attention kernel (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "window": Capability(
        None,
        "int | None: a sliding window; a query at position i sees only keys at positions j "
        "with i - j < window (Mistral). The decoder builds it into the bias from positions, "
        "with the model's own spec.sliding_window (the smaller wins), so it holds through the "
        "KV cache and the kernel needs no window code.",
    ),
    "softmax_attention": Capability(
        False,
        "bool: the kernel computes exactly softmax(q k^T * dims.scale + bias) v and nothing "
        "else, so float32 CPU decode steps of rotary layers may run through the engine's fused "
        "path (core/model/decode_step.py) instead of the kernel. A kernel that changes the "
        "arithmetic (soft-capping, another normalisation) leaves it False.",
    ),
}
