"""Nucleus (top-p) sampling (Holtzman et al., 2020, "The Curious Case of Neural Text
Degeneration", arXiv:1904.09751): keep the smallest set of most likely tokens whose
probability reaches ``top_p`` (at least one token)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


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
        # few of them, sort just those: the cut is the same, the sort far cheaper. (The chain
        # refuses NaN and +inf logits, so "finite" is "not -inf".)
        vocab = logits.shape[-1]
        n = max(vocab - int(torch.isneginf(logits).sum(dim=-1).min()), 1)
        if n < vocab:
            values, indices = torch.topk(logits, n, dim=-1, largest=True, sorted=True)
            values, indices = values.flip(-1), indices.flip(-1)  # [B, n] ascending
        else:
            if vocab > 4096:  # below, a full sort is cheap and the cut exactly transformers'
                cut = self._cut_among_likely(logits)
                if cut is not None:
                    return cut
            values, indices = torch.sort(logits, dim=-1)  # [B, V] ascending
        # a token goes when it and every less likely token together hold at most 1 - top_p
        # (summed from the least likely up, as transformers does); the most likely one stays
        tail_mass = torch.cumsum(torch.softmax(values, dim=-1), dim=-1)
        drop_sorted = tail_mass <= 1 - self.p
        drop_sorted[..., -1] = False
        # write -inf over the dropped tokens only (a scatter of n values, not a pass over V)
        return logits.scatter(-1, indices, values.masked_fill(drop_sorted, float("-inf")))

    def _cut_among_likely(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The cut from the likely tokens alone (probability at least 1e-3, then 1e-6, of the
        most likely one's) when the nucleus lies among them, the common case for a language
        model; ``None`` when it does not. Selecting them costs one comparison over V; a full
        sort of 49,152 logits costs ~3 ms here, and even a top-1024 ~0.4 ms on fresh data."""
        probs = torch.softmax(logits, dim=-1)  # [B, V]
        total = probs.sum(dim=-1, dtype=torch.float64)  # [B], 1 up to rounding
        limit = float(torch.tensor(1 - self.p, dtype=torch.float32))  # as transformers has it
        out = torch.full_like(logits, float("-inf"))
        for b in range(logits.shape[0]):
            row = probs[b]  # [V]
            for rel in (1e-3, 1e-6):
                # the m most likely tokens, ties included: every other one is less likely
                idx = (row >= row.max() * rel).nonzero().squeeze(-1)  # [m]
                likely = row[idx].double()
                outside = total[b] - likely.sum()
                if outside <= limit:  # the least likely of the m keeps no token outside
                    break
            else:
                return None
            # as transformers: a token goes when it and every less likely token hold at most
            # 1 - top_p, summed from the least likely up; the sum is taken in float64 and
            # starts from the outside mass, so it differs from transformers' fp32 running sum
            # over the whole vocabulary only where that sum rounds across 1 - top_p
            ascending, order = torch.sort(likely)  # [m]
            drop = outside + torch.cumsum(ascending, dim=0) <= limit
            drop[-1] = False  # the most likely token stays
            keep = idx[order[~drop]]
            out[b, keep] = logits[b, keep]
        return out


def build(params: Any) -> TopP | None:
    p = knob(params, "top_p", 1.0)
    return None if p == 1 and not isinstance(p, bool) else TopP(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "top_p", build, TopPConfig)
