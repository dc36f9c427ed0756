"""Frequency penalty (OpenAI API; vLLM's ``SamplingParams.frequency_penalty``): subtract
``frequency_penalty`` times the number of times a token was generated so far.

Matches vLLM's ``apply_penalties``: ``logits -= frequency_penalty * count`` over the generated
tokens only (the prompt does not count). Positive values discourage repetition, negative ones
encourage it.
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
class FrequencyPenaltyConfig(SamplerConfig):
    name: str = "frequency_penalty"
    frequency_penalty: float = field(default=0.5, metadata={"off": 0.0})  # 0.0 disables


def generated_counts(logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
    """How often each token was generated in each row: [B, V] float32 (see
    :func:`~plugformer.core.interfaces.sampler.generated_slots`)."""
    batch, vocab = logits.shape
    target = generated_slots(logits, ctx)  # [B, T]
    counts = torch.zeros(batch, vocab + 1, dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(-1, target, torch.ones_like(target, dtype=logits.dtype))
    return counts[:, :vocab]


class FrequencyPenalty:
    """logits - frequency_penalty * (times generated)."""

    priority = 14  # after repetition_penalty (12), before presence_penalty (15), as in vLLM

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def check(self) -> list[str]:
        return signed_penalty_problems("frequency_penalty", self.penalty)

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]
        return logits - self.penalty * generated_counts(logits, ctx)


def build(params: Any) -> FrequencyPenalty | None:
    p = knob(params, "frequency_penalty", 0.0)
    return None if p == 0 and not isinstance(p, bool) else FrequencyPenalty(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "frequency_penalty", build, FrequencyPenaltyConfig)
