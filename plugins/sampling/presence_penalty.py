"""Presence penalty (OpenAI API; vLLM's ``SamplingParams.presence_penalty``): subtract
``presence_penalty`` from every token generated at least once so far.

Matches vLLM's ``apply_penalties``: ``logits -= presence_penalty * (count > 0)`` over the
generated tokens only (the prompt does not count). Positive values encourage new tokens,
negative ones encourage repetition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class PresencePenaltyConfig(SamplerConfig):
    name: str = "presence_penalty"
    presence_penalty: float = field(default=0.5, metadata={"off": 0.0})  # 0.0 disables


def generated_mask(logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
    """Whether each token was generated in each row: [B, V] bool.

    The generated tokens of row ``b`` are ``token_ids[b, prompt_lengths[b]:]`` (with left
    padding, ``prompt_lengths`` counts the padding too) where ``ctx.valid`` is not False."""
    ids = ctx.token_ids.to(logits.device)  # [B, T]
    batch, vocab = logits.shape
    positions = torch.arange(ids.shape[-1], device=ids.device)  # [T]
    generated = positions >= ctx.prompt_lengths.to(ids.device).long()[:, None]  # [B, T]
    if ctx.valid is not None:
        generated &= ctx.valid.to(ids.device)
    # prompt positions (and ids past the vocabulary) land in a spare column, dropped after
    target = torch.where(generated, ids.clamp(max=vocab), vocab)  # [B, T]
    mask = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device)
    return mask.scatter_(-1, target, True)[:, :vocab]


class PresencePenalty:
    """logits - presence_penalty * (generated at least once)."""

    priority = 15  # after frequency_penalty (14), as in vLLM

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def check(self) -> list[str]:
        p = self.penalty
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            return [f"presence_penalty must be a finite number in [-2, 2] (0 disables), got {p!r}"]
        if not -2 <= p <= 2:
            return [f"presence_penalty must be in [-2, 2] (0 disables), got {p!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]; a bool mask times a float is 0.0 or the penalty, exactly as in vLLM
        return logits - self.penalty * generated_mask(logits, ctx)


def build(params: Any) -> PresencePenalty | None:
    p = knob(params, "presence_penalty", 0.0)
    return None if p == 0 and not isinstance(p, bool) else PresencePenalty(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "presence_penalty", build, PresencePenaltyConfig)
