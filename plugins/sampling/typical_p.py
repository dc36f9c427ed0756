"""Locally typical sampling (Meister et al., 2023, "Locally Typical Sampling", TACL,
arXiv:2202.00666): keep the tokens whose surprisal is closest to the distribution's entropy,
fewest first, until they hold ``typical_p`` of the probability mass.

Matches transformers' ``TypicalLogitsWarper`` (min_tokens_to_keep=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class TypicalPConfig(SamplerConfig):
    name: str = "typical_p"
    typical_p: float = field(default=0.9, metadata={"off": 1.0})  # 1.0 disables


class TypicalP:
    """Mask the tokens least typical (surprisal farthest from the entropy) beyond ``typical_p``."""

    priority = 60  # after min_p (50), as in transformers' warper order

    def __init__(self, mass: float) -> None:
        self.mass = mass

    def check(self) -> list[str]:
        m = self.mass
        if (
            isinstance(m, bool)
            or not isinstance(m, (int, float))
            or math.isnan(m)
            or not 0 < m <= 1
        ):
            return [f"typical_p must be in (0, 1] (1 disables), got {m!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]. Masked (-inf) tokens have zero probability and an infinite distance to
        # the entropy, so they sort last and never change the cut: when an earlier step (top_k)
        # left few finite logits, work on just those.
        vocab = logits.shape[-1]
        n = max(vocab - int(torch.isneginf(logits).sum(dim=-1).min()), 1)  # finite: not -inf
        if n < vocab:
            sub, sub_idx = torch.topk(logits, n, dim=-1)  # [B, n]
        else:
            # a full sort: unlike top_p's nucleus, the typical set is not a top-K, and cutting
            # from a partial order would not reproduce transformers' fp32 running sum exactly
            sub, sub_idx = logits, None
        logp = torch.log_softmax(sub, dim=-1)  # [B, n]
        entropy = -(logp * logp.exp()).nansum(dim=-1, keepdim=True)  # [B, 1]; 0 * -inf -> NaN
        distance, order = torch.sort((-logp - entropy).abs(), dim=-1)  # [B, n] ascending
        cum = torch.softmax(sub.gather(-1, order), dim=-1).cumsum(dim=-1)  # [B, n]
        # the cut is the distance of the first token at which the mass reaches typical_p
        last = (cum < self.mass).sum(dim=-1, keepdim=True).clamp_(max=n - 1)  # [B, 1]
        drop_sorted = distance > distance.gather(-1, last)
        drop_sorted[..., 0] = False  # keep at least one token
        drop_sub = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # [B, n]
        if sub_idx is None:
            return logits.masked_fill(drop_sub, float("-inf"))
        # write -inf over the dropped tokens only (a scatter of n values, not a pass over V)
        return logits.scatter(-1, sub_idx, sub.masked_fill(drop_sub, float("-inf")))


def build(params: Any) -> TypicalP | None:
    m = knob(params, "typical_p", 1.0)
    if m == 1 and not isinstance(m, bool):
        return None
    sampler = TypicalP(m)
    # temperature 0 is greedy decoding (vLLM): like transformers without do_sample, it ignores
    # this warper, which (unlike top_k/top_p/min_p) may remove the most likely token. A bad
    # value is still built, so that it is refused.
    if knob(params, "temperature", 1.0) == 0 and not sampler.check():
        return None
    return sampler


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "typical_p", build, TypicalPConfig)
