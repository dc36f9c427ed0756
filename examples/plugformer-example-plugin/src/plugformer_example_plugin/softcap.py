"""Attention logit soft-capping (Gemma Team, 2024, "Gemma 2", arXiv:2408.00118).

Before the mask and the softmax, every attention score is squashed into ``(-cap, cap)``:
``scores = cap * tanh(scores / cap)`` with ``scores = q k^T * scale``, as Gemma 2 does with
``cap = 50`` (the idea goes back to Bello et al., 2016, arXiv:1611.09940). Small scores are
almost unchanged; a very large ``cap`` gives plain attention. Query heads share key/value
heads in groups (GQA; MHA and MQA are its two ends). PyTorch's fused
``scaled_dot_product_attention`` cannot change the scores, so the product is spelled out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plugformer.core import AttentionConfig, AttentionDims, hookimpl


@dataclass
class SoftcapConfig(AttentionConfig):
    name: str = "softcap"
    cap: float = 50.0  # Gemma 2's attention soft cap; must be > 0


class Softcap:
    """Grouped-query attention with tanh soft-capped scores."""

    def __init__(self, config: SoftcapConfig, dims: AttentionDims) -> None:
        self.config = config
        self.dims = dims
        self.groups = dims.num_heads // max(dims.num_kv_heads, 1)

    def check(self) -> list[str]:
        reasons = []
        cap = self.config.cap
        if (
            isinstance(cap, bool)
            or not isinstance(cap, (int, float))
            or not math.isfinite(cap)
            or cap <= 0
        ):
            reasons.append(f"attention.cap must be a finite number > 0, got {cap!r}")
        if self.dims.num_kv_heads <= 0 or self.dims.num_heads % self.dims.num_kv_heads:
            reasons.append(
                f"softcap needs num_kv_heads to divide num_heads, got num_kv_heads="
                f"{self.dims.num_kv_heads} and num_heads={self.dims.num_heads}"
            )
        return reasons

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        # q: [B, Hq, S, D]; k, v: [B, Hkv, T, D]; bias: [B|1, Hq|1, S, T]
        b, hq, s, d = q.shape
        hkv, t = k.shape[1], k.shape[2]
        cap = float(self.config.cap)
        qg = q.reshape(b, hkv, self.groups, s, d)  # [B, Hkv, G, S, D]; head h uses kv h // G
        scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float()  # [B, Hkv, G, S, T]
        scores = scores.reshape(b, hq, s, t) * self.dims.scale  # [B, Hq, S, T]
        scores = cap * torch.tanh(scores / cap) + bias  # cap first, then mask / ALiBi terms
        probs = torch.softmax(scores, dim=-1).to(v.dtype).reshape(b, hkv, self.groups, s, t)
        out = torch.matmul(probs, v.unsqueeze(2))  # [B, Hkv, G, S, D]
        return out.reshape(b, hq, s, d)


@hookimpl
def plugformer_register(registry):
    registry.register("attention", "softcap", Softcap, SoftcapConfig)
