"""Min-p sampling (Nguyen et al., 2024, "Turning Up the Heat: Min-p Sampling for Creative and
Coherent LLM Outputs", arXiv:2407.01082): keep the tokens whose probability is at least
``min_p`` times the probability of the most likely token.

Matches transformers' ``MinPLogitsWarper`` (same fp32 softmax and comparison, so the same mask).
No sort: the threshold needs only the row maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class MinPConfig(SamplerConfig):
    name: str = "min_p"
    # llama.cpp's default when selected; 0.0 disables
    min_p: float = field(default=0.05, metadata={"off": 0.0})


class MinP:
    """Mask each token with ``p < min_p * max(p)``; the most likely token always stays."""

    priority = 50  # after top_p (40), as in transformers' warper order

    def __init__(self, min_p: float) -> None:
        self.min_p = min_p

    def check(self) -> list[str]:
        p = self.min_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p):
            return [f"min_p must be a number in [0, 1] (0 disables), got {p!r}"]
        if not 0 <= p <= 1:
            return [f"min_p must be in [0, 1] (0 disables), got {p!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]
        probs = torch.softmax(logits, dim=-1)  # [B, V]
        threshold = probs.amax(dim=-1, keepdim=True) * self.min_p  # [B, 1]
        # for min_p <= 1 the arg-max never falls below the threshold, so at least one token
        # stays without transformers' extra top-1 pass
        return logits.masked_fill(probs < threshold, float("-inf"))


def build(params: Any) -> MinP | None:
    p = knob(params, "min_p", 0.0)
    return None if p == 0 and not isinstance(p, bool) else MinP(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "min_p", build, MinPConfig)
