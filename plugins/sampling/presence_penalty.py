"""Presence penalty (OpenAI API; vLLM's ``SamplingParams.presence_penalty``): subtract
``presence_penalty`` from every token generated at least once so far.

Matches vLLM's ``apply_penalties``: ``logits -= presence_penalty * (count > 0)`` over the
generated tokens only (the prompt does not count). Positive values encourage new tokens,
negative ones encourage repetition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import (
    SamplerConfig,
    SamplingContext,
    generated_slots,
    knob,
    signed_penalty_problems,
)


@dataclass
class PresencePenaltyConfig(SamplerConfig):
    name: str = "presence_penalty"
    presence_penalty: float = field(default=0.5, metadata={"off": 0.0})  # 0.0 disables


def generated_mask(logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
    """Whether each token was generated in each row: [B, V] bool (see
    :func:`~plugformer.core.interfaces.sampler.generated_slots`)."""
    batch, vocab = logits.shape
    target = generated_slots(logits, ctx)  # [B, T]
    mask = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device)
    return mask.scatter_(-1, target, True)[:, :vocab]


class PresencePenalty:
    """logits - presence_penalty * (generated at least once)."""

    priority = 15  # after frequency_penalty (14), as in vLLM

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def check(self) -> list[str]:
        return signed_penalty_problems("presence_penalty", self.penalty)

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]; a bool mask times a float is 0.0 or the penalty, exactly as in vLLM
        return logits - self.penalty * generated_mask(logits, ctx)


def build(params: Any) -> PresencePenalty | None:
    p = knob(params, "presence_penalty", 0.0)
    return None if p == 0 and not isinstance(p, bool) else PresencePenalty(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "presence_penalty", build, PresencePenaltyConfig)
