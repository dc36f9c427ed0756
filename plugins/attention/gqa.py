"""Grouped-query attention (Ainslie et al., 2023, "GQA", arXiv:2305.13245).

Query heads share key/value heads in groups of ``num_heads // num_kv_heads``; one KV head is
multi-query attention (Shazeer, 2019, arXiv:1911.02150). ``impl=sdpa`` runs PyTorch's
``scaled_dot_product_attention`` with ``enable_gqa``; ``impl=reference`` spells the grouped
product out without copying keys or values per query head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plugformer.core import hookimpl
from plugformer.core.interfaces.attention import AttentionConfig, AttentionDims

IMPLS = ("sdpa", "reference")


@dataclass
class GQAConfig(AttentionConfig):
    name: str = "gqa"
    impl: str = "sdpa"  # sdpa | reference
    # a query sees itself and the sliding_window - 1 keys before it (Mistral); None: the
    # model's own window (spec.sliding_window), if any
    sliding_window: int | None = None


class GQA:
    """Grouped-query attention (MHA and MQA are its two ends)."""

    def __init__(self, config: GQAConfig, dims: AttentionDims) -> None:
        self.config = config
        self.dims = dims
        # exactly softmax(q k^T * scale + bias) v: the decoder may fuse decode steps
        self.softmax_attention = True
        self.window = config.sliding_window  # applied by the decoder's mask
        self.groups = dims.num_heads // max(dims.num_kv_heads, 1)

    def check(self) -> list[str]:
        reasons = []
        if self.dims.num_kv_heads <= 0 or self.dims.num_heads % self.dims.num_kv_heads:
            reasons.append(
                f"gqa needs num_kv_heads to divide num_heads, got num_kv_heads="
                f"{self.dims.num_kv_heads} and num_heads={self.dims.num_heads}"
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
        # q: [B, Hq, S, D]; k, v: [B, Hkv, T, D]; bias: [B|1, Hq|1, S, T]
        if self.config.impl == "sdpa":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, scale=self.dims.scale, enable_gqa=self.groups > 1
            )
        b, hq, s, d = q.shape
        hkv, t = k.shape[1], k.shape[2]
        qg = q.reshape(b, hkv, self.groups, s, d)  # [B, Hkv, G, S, D]
        scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float()  # [B, Hkv, G, S, T]
        scores = scores.reshape(b, hq, s, t) * self.dims.scale + bias
        probs = torch.softmax(scores, dim=-1).to(v.dtype).reshape(b, hkv, self.groups, s, t)
        out = torch.matmul(probs, v.unsqueeze(2))  # [B, Hkv, G, S, D]
        return out.reshape(b, hq, s, d)


@hookimpl
def plugformer_register(registry):
    registry.register("attention", "gqa", GQA, GQAConfig)
