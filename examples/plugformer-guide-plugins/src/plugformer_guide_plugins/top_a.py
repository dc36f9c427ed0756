"""Top-a sampling (introduced by BlinkDL with RWKV-LM; also in koboldcpp and
text-generation-webui): keep the tokens whose probability is at least ``top_a`` times the
square of the most likely token's.

The threshold ``top_a * max(p)^2`` rises steeply with the model's confidence: a flat
distribution keeps almost everything, a peaked one little besides its best token. For
``top_a <= 1`` the most likely token always stays (``max(p) >= top_a * max(p)^2``).

The knob ``top_a`` (a float, neutral 0.0) is this plugin's own: no built-in sampler declares
it, and a sampler that declared it with another type or neutral value would be refused when it
registers. Priority 55 is free: after top_p (40) and min_p (50), before typical_p (60).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import SamplerConfig, SamplingContext, hookimpl, knob


@dataclass
class TopAConfig(SamplerConfig):
    name: str = "top_a"
    top_a: float = field(default=0.2, metadata={"off": 0.0})  # 0.2 when selected; 0 disables


class TopA:
    """Mask each token with ``p < top_a * max(p)^2``."""

    priority = 55

    def __init__(self, top_a: float) -> None:
        self.top_a = top_a

    def check(self) -> list[str]:
        a = self.top_a
        if isinstance(a, bool) or not isinstance(a, (int, float)) or math.isnan(a):
            return [f"top_a must be a number in [0, 1] (0 disables), got {a!r}"]
        if not 0 <= a <= 1:
            return [f"top_a must be in [0, 1] (0 disables), got {a!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V] float32; -inf (masked by an earlier sampler) has probability 0
        probs = torch.softmax(logits, dim=-1)  # [B, V]
        threshold = self.top_a * probs.amax(dim=-1, keepdim=True) ** 2  # [B, 1]
        return logits.masked_fill(probs < threshold, float("-inf"))


def build(params: Any) -> TopA | None:
    a = knob(params, "top_a", 0.0)
    return None if a == 0 and not isinstance(a, bool) else TopA(a)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "top_a", build, TopAConfig)
