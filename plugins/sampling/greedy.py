"""Greedy decoding: always the most likely token (temperature 0, as in vLLM).

Active whenever ``temperature == 0``; it keeps only the arg-max logit, so the final draw from
``softmax(logits)`` is deterministic. Ties go to the lowest token id, like ``torch.argmax``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class GreedyConfig(SamplerConfig):
    name: str = "greedy"
    # selecting `sampler=greedy` makes temperature 0 the default; elsewhere it is off (1.0)
    temperature: float = field(default=0.0, metadata={"off": 1.0})


class Greedy:
    """Keep only the arg-max logit of each row."""

    priority = 90

    def check(self) -> list[str]:
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]
        best = logits.argmax(dim=-1, keepdim=True)  # [B, 1]
        out = torch.full_like(logits, float("-inf"))
        return out.scatter_(-1, best, logits.gather(-1, best))


def build(params: Any) -> Greedy | None:
    return Greedy() if knob(params, "temperature", 1.0) == 0 else None


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "greedy", build, GreedyConfig)
