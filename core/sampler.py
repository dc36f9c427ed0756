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
