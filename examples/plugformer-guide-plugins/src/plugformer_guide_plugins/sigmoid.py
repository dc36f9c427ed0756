"""Sigmoid attention (Ramapuram et al., 2024, "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention", arXiv:2409.04431): every score goes through its own sigmoid instead of a
softmax over the row.

``out = sigmoid(q k^T * scale + b + mask) v`` with the paper's bias ``b = -log(n)``, ``n`` the
sequence length; here ``n`` is the context the model runs under (``dims.max_seq_len``) unless
``attention.bias`` sets ``b``. The mask's ``-inf`` gives ``sigmoid(-inf) = 0``, so hidden keys
add nothing, and ALiBi terms add to the score as they do under softmax. The weights of a row do
not sum to one, so this is not softmax attention: the kernel leaves the ``softmax_attention``
capability at its default (False) and the engine never replaces it by its fused decode step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plugformer.core import AttentionConfig, AttentionDims, hookimpl


@dataclass
class SigmoidConfig(AttentionConfig):
    name: str = "sigmoid"
    bias: float | None = None  # b, added to every score; None: -log(max_seq_len), the paper's


class Sigmoid:
    """Grouped-query sigmoid attention (MHA and MQA are its two ends)."""

    def __init__(self, config: SigmoidConfig, dims: AttentionDims) -> None:
        self.config = config
        self.dims = dims
        self.groups = dims.num_heads // max(dims.num_kv_heads, 1)
        if config.bias is not None:
            self.offset = config.bias
        else:
            self.offset = -math.log(dims.max_seq_len) if dims.max_seq_len > 0 else math.nan

    def check(self) -> list[str]:
        reasons = []
        b = self.config.bias
        if b is not None and (
            isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
        ):
            reasons.append(f"attention.bias must be a finite number or null, got {b!r}")
        if b is None and self.dims.max_seq_len <= 0:
            reasons.append(
                "attention.bias=null means -log(max_seq_len), but the kernel was built without "
                "the model's max_seq_len; set attention.bias"
            )
        if self.dims.num_kv_heads <= 0 or self.dims.num_heads % self.dims.num_kv_heads:
            reasons.append(
                f"sigmoid needs num_kv_heads to divide num_heads, got num_kv_heads="
                f"{self.dims.num_kv_heads} and num_heads={self.dims.num_heads}"
            )
        return reasons

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        # q: [B, Hq, S, D]; k, v: [B, Hkv, T, D]; bias: [B|1, Hq|1, S, T]
        b, hq, s, d = q.shape
        hkv, t = k.shape[1], k.shape[2]
        qg = q.reshape(b, hkv, self.groups, s, d)  # [B, Hkv, G, S, D]; head h uses kv h // G
        scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float()  # [B, Hkv, G, S, T]
        scores = scores.reshape(b, hq, s, t) * self.dims.scale + self.offset + bias
        weights = torch.sigmoid(scores).to(v.dtype).reshape(b, hkv, self.groups, s, t)
        out = torch.matmul(weights, v.unsqueeze(2))  # [B, Hkv, G, S, D]
        return out.reshape(b, hq, s, d)


@hookimpl
def plugformer_register(registry):
    registry.register("attention", "sigmoid", Sigmoid, SigmoidConfig)
