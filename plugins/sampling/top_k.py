"""Top-k sampling (Fan, Lewis and Dauphin, 2018, "Hierarchical Neural Story Generation",
arXiv:1805.04833): keep the k most likely tokens (ties with the k-th are kept, as in HF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class TopKConfig(SamplerConfig):
    name: str = "top_k"
    top_k: int = field(default=50, metadata={"off": 0})  # 0 disables


class TopK:
    """Mask every logit below the k-th largest of its row."""

    priority = 30

    def __init__(self, k: int) -> None:
        self.k = k

    def check(self) -> list[str]:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            return [f"top_k must be an integer >= 0 (0 disables), got {self.k!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]
        k = self.k
        if k >= logits.shape[-1]:
            return logits
        # one more than k: when the (k+1)-th is below the k-th there is no tie to keep, and
        # writing the k values into a row of -inf is cheaper than a mask over V
        values, indices = torch.topk(logits, k + 1, dim=-1)  # [B, k + 1]
        if bool((values[:, k] < values[:, k - 1]).all()):
            out = torch.full_like(logits, float("-inf"))
            return out.scatter_(-1, indices[:, :k], values[:, :k])
        kth = values[:, k - 1 : k]  # [B, 1]
        return logits.masked_fill(logits < kth, float("-inf"))


def build(params: Any) -> TopK | None:
    k = knob(params, "top_k", 0)
    return None if k == 0 and not isinstance(k, bool) else TopK(k)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "top_k", build, TopKConfig)
