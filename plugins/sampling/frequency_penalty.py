"""Frequency penalty (OpenAI API; vLLM's ``SamplingParams.frequency_penalty``): subtract
``frequency_penalty`` times the number of times a token was generated so far.

Matches vLLM's ``apply_penalties``: ``logits -= frequency_penalty * count`` over the generated
tokens only (the prompt does not count). Positive values discourage repetition, negative ones
encourage it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class FrequencyPenaltyConfig(SamplerConfig):
    name: str = "frequency_penalty"
    frequency_penalty: float = field(default=0.5, metadata={"off": 0.0})  # 0.0 disables


def generated_counts(logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
    """How often each token was generated in each row: [B, V] float32.

    The generated tokens of row ``b`` are ``token_ids[b, prompt_lengths[b]:]`` (with left
    padding, ``prompt_lengths`` counts the padding too) where ``ctx.valid`` is not False."""
    ids = ctx.token_ids.to(logits.device)  # [B, T]
    batch, vocab = logits.shape
    positions = torch.arange(ids.shape[-1], device=ids.device)  # [T]
    generated = positions >= ctx.prompt_lengths.to(ids.device).long()[:, None]  # [B, T]
    if ctx.valid is not None:
        generated &= ctx.valid.to(ids.device)
    # prompt positions (and ids past the vocabulary) count in a spare column, dropped after
    target = torch.where(generated, ids.clamp(max=vocab), vocab)  # [B, T]
    counts = torch.zeros(batch, vocab + 1, dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(-1, target, torch.ones_like(target, dtype=logits.dtype))
    return counts[:, :vocab]


class FrequencyPenalty:
    """logits - frequency_penalty * (times generated)."""

    priority = 14  # after repetition_penalty (12), before presence_penalty (15), as in vLLM

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def check(self) -> list[str]:
        p = self.penalty
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            return [f"frequency_penalty must be a finite number in [-2, 2] (0 disables), got {p!r}"]
        if not -2 <= p <= 2:
            return [f"frequency_penalty must be in [-2, 2] (0 disables), got {p!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]
        return logits - self.penalty * generated_counts(logits, ctx)


def build(params: Any) -> FrequencyPenalty | None:
    p = knob(params, "frequency_penalty", 0.0)
    return None if p == 0 and not isinstance(p, bool) else FrequencyPenalty(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "frequency_penalty", build, FrequencyPenaltyConfig)
