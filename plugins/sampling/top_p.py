"""Nucleus (top-p) sampling (Holtzman et al., 2020, "The Curious Case of Neural Text
Degeneration", arXiv:1904.09751): keep the smallest set of most likely tokens whose
probability reaches ``top_p`` (at least one token)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class TopPConfig(SamplerConfig):
    name: str = "top_p"
    top_p: float = field(default=0.9, metadata={"off": 1.0})  # 1.0 disables


class TopP:
    """Mask the tail of each row's distribution beyond cumulative probability ``top_p``."""

    priority = 40

    def __init__(self, p: float) -> None:
        self.p = p

    def check(self) -> list[str]:
        p = self.p
        if (
            isinstance(p, bool)
            or not isinstance(p, (int, float))
            or math.isnan(p)
            or not 0 < p <= 1
        ):
            return [f"top_p must be in (0, 1], got {p!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]. Only finite logits can survive, so when an earlier step (top_k) left
        # few of them, sort just those: the cut is the same, the sort far cheaper.
        finite = torch.isfinite(logits).sum(dim=-1).max().item()
        n = max(int(finite), 1)
        if n < logits.shape[-1]:
            values, indices = torch.topk(logits, n, dim=-1, largest=True, sorted=True)
            values, indices = values.flip(-1), indices.flip(-1)  # [B, n] ascending
        else:
            values, indices = torch.sort(logits, dim=-1)  # [B, V] ascending
        # a token goes when it and every less likely token together hold at most 1 - top_p
        # (summed from the least likely up, as transformers does); the most likely one stays
        tail_mass = torch.cumsum(torch.softmax(values, dim=-1), dim=-1)
        drop_sorted = tail_mass <= 1 - self.p
        drop_sorted[..., -1] = False
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, indices, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


def build(params: Any) -> TopP | None:
    p = knob(params, "top_p", 1.0)
    return None if p == 1 and not isinstance(p, bool) else TopP(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "top_p", build, TopPConfig)
