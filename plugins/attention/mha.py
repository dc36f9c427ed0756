"""Multi-head attention (Vaswani et al., 2017, "Attention Is All You Need", arXiv:1706.03762).

Every query head has its own key/value head. ``impl=sdpa`` runs PyTorch's fused
``scaled_dot_product_attention``; ``impl=reference`` spells out softmax(q k^T * scale + bias) v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plugformer.core import hookimpl
from plugformer.core.interfaces.attention import AttentionConfig, AttentionDims

IMPLS = ("sdpa", "reference")


@dataclass
class MHAConfig(AttentionConfig):
    name: str = "mha"
    impl: str = "sdpa"  # sdpa | reference
    # a query sees itself and the sliding_window - 1 keys before it (Mistral); None: the
    # model's own window (spec.sliding_window), if any
    sliding_window: int | None = None


class MHA:
    """Multi-head attention: as many key/value heads as query heads."""

    def __init__(self, config: MHAConfig, dims: AttentionDims) -> None:
        self.config = config
        self.dims = dims
        # exactly softmax(q k^T * scale + bias) v: the decoder may fuse decode steps
        self.softmax_attention = True
        self.window = config.sliding_window  # applied by the decoder's mask

    def check(self) -> list[str]:
        reasons = []
        if self.dims.num_kv_heads != self.dims.num_heads:
            reasons.append(
                f"mha needs as many KV heads as heads, got num_kv_heads={self.dims.num_kv_heads} "
                f"and num_heads={self.dims.num_heads}; use attention=gqa"
            )
        if self.config.impl not in IMPLS:
            reasons.append(f"attention.impl={self.config.impl!r} is not one of {', '.join(IMPLS)}")
        w = self.window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
            reasons.append(f"attention.sliding_window={w!r} must be a positive integer or null")
        return reasons

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        # q, k, v: [B, H, S|T, D]; bias: [B|1, H|1, S, T]
        if self.config.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.dims.scale)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.dims.scale + bias  # [B,H,S,T]
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        return torch.matmul(probs, v)  # [B, H, S, D]


@hookimpl
def plugformer_register(registry):
    registry.register("attention", "mha", MHA, MHAConfig)
