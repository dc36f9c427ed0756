"""Repetition penalty (Keskar et al., 2019, "CTRL: A Conditional Transformer Language Model
for Controllable Generation", arXiv:1909.05858): make every token already in the sequence less
likely, dividing a positive logit by ``repetition_penalty`` and multiplying a negative one.

Matches transformers' ``RepetitionPenaltyLogitsProcessor`` (and vLLM's repetition penalty): the
penalty applies once per token, over the prompt and the generated tokens alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class RepetitionPenaltyConfig(SamplerConfig):
    name: str = "repetition_penalty"
    # CTRL's suggested value when selected; 1.0 disables, below 1 rewards repetition
    repetition_penalty: float = field(default=1.2, metadata={"off": 1.0})


class RepetitionPenalty:
    """logit / penalty where logit >= 0, logit * penalty where < 0, for tokens seen so far."""

    priority = 12  # after logit_bias (10), before no_repeat_ngram_size and temperature

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def check(self) -> list[str]:
        p = self.penalty
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            return [f"repetition_penalty must be a finite number > 0 (1 disables), got {p!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]; token_ids: [B, T]. Every position counts, prompt included, as in
        # transformers; padding (ctx.valid False) does not, as transformers skips left padding.
        vocab = logits.shape[-1]
        # ids past the head's vocabulary (a larger embedding table) and padding go to a spare
        # column, dropped after
        ids = ctx.token_ids.to(logits.device).clamp(max=vocab)  # [B, T]
        if ctx.valid is not None:
            ids = ids.masked_fill(~ctx.valid.to(ids.device), vocab)
        padded = torch.nn.functional.pad(logits, (0, 1))  # [B, V + 1]
        seen = padded.gather(-1, ids)  # [B, T]; a repeated id gathers (and writes) the same value
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter_(-1, ids, seen)[:, :vocab]


def build(params: Any) -> RepetitionPenalty | None:
    p = knob(params, "repetition_penalty", 1.0)
    return None if p == 1 and not isinstance(p, bool) else RepetitionPenalty(p)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "repetition_penalty", build, RepetitionPenaltyConfig)
