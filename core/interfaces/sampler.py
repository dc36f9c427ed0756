"""The sampler interface: a logits processor in a chain, in the style of HF logits processors.

Every sampler plugin's config dataclass adds its knobs (``top_p``, ``temperature`` ...). The
composed sampling config is the union of all registered knobs, with the selected option's
defaults, so ``sampler=top_p sampler.temperature=0.7 sampler.top_p=0.9`` builds the chain
temperature -> top_p. Knobs of the samplers not selected take their neutral value: a field's
default, or ``metadata["off"]`` when the default is active
(``top_p: float = field(default=0.9, metadata={"off": 1.0})``). Each plugin's builder returns
``None`` when its knobs are neutral.
The chain runs in ascending ``priority``; the next token is then drawn from
``softmax(logits)`` (a greedy chain leaves one finite logit, so the draw is the argmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SamplerConfig:
    """Base config of every sampler plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass
class SamplingContext:
    """What a processor may look at besides the logits."""

    token_ids: torch.Tensor  # [B, T] prompt and generated tokens so far (left-padded)
    prompt_lengths: torch.Tensor  # [B] prompt length in each row, padding included: the
    # generated tokens of every row are token_ids[:, prompt_lengths[0]:]
    generator: torch.Generator | None = None  # row 0's generator (draws are per row)
    valid: torch.Tensor | None = None  # [B, T] False where token_ids holds padding


@runtime_checkable
class Sampler(Protocol):
    """Built by ``builder(params)`` where ``params`` has every registered knob as an attribute;
    the builder returns ``None`` when its knobs leave the logits unchanged."""

    priority: int  # position in the chain, ascending; built-ins use 10..90

    def check(self) -> list[str]:
        """Reasons these knob values are invalid (empty when valid)."""
        ...

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        """Process logits [B, V] (float32) into logits [B, V]; ``-inf`` removes a token."""
        ...


def knob(params: Any, name: str, default: Any) -> Any:
    """A knob's value from a params object, or ``default`` when no plugin declares it."""
    return getattr(params, name, default)


def generated_slots(logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
    """For output-only penalties: the column of each history token in a [B, V + 1] table, its
    id where it was generated, ``V`` (a spare column, dropped after) for prompt positions,
    padding and ids past the vocabulary. [B, T] long.

    The generated tokens of row ``b`` are ``token_ids[b, prompt_lengths[b]:]`` (with left
    padding, ``prompt_lengths`` counts the padding too) where ``ctx.valid`` is not False."""
    ids = ctx.token_ids.to(logits.device)  # [B, T]
    vocab = logits.shape[-1]
    positions = torch.arange(ids.shape[-1], device=ids.device)  # [T]
    generated = positions >= ctx.prompt_lengths.to(ids.device).long()[:, None]  # [B, T]
    if ctx.valid is not None:
        generated &= ctx.valid.to(ids.device)
    return torch.where(generated, ids.clamp(max=vocab), vocab)


def signed_penalty_problems(name: str, p: Any) -> list[str]:
    """Why ``p`` is not a valid OpenAI-style penalty (a finite number in [-2, 2])."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
        return [f"{name} must be a finite number in [-2, 2] (0 disables), got {p!r}"]
    if not -2 <= p <= 2:
        return [f"{name} must be in [-2, 2] (0 disables), got {p!r}"]
    return []
