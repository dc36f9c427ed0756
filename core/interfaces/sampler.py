"""The sampler interface: a logits processor in a chain, in the style of HF logits processors.

Knobs
-----
Every sampler plugin's config dataclass adds its knobs (``top_p``, ``temperature`` ...): every
field but ``name``. The composed sampling config is the union of all registered knobs, with the
selected option's defaults, so ``sampler=top_p sampler.temperature=0.7 sampler.top_p=0.9`` builds
the chain temperature -> top_p. Knobs of the samplers not selected take their neutral value: a
field's default, or ``metadata["off"]`` when the default is active
(``top_p: float = field(default=0.9, metadata={"off": 1.0})``; see :func:`neutral_value`).
Each plugin's builder returns ``None`` when its knobs are neutral.

One knob, one meaning: a sampler may declare a knob that a registered sampler already declares
only with the same type and the same neutral value. It then shares that knob (both builders
read the one value) and gives it its own default when it is the selected option: the built-in
``greedy`` declares ``temperature: float = field(default=0.0, metadata={"off": 1.0})`` beside
``temperature``'s ``temperature: float = 1.0``. The same name with another type or another
neutral value is refused when the second sampler registers, with a
:class:`~plugformer.core.errors.DuplicateKnobError` naming both samplers, both plugins and the
knob. To read another sampler's knob without declaring it, use :func:`knob`.

Temperature
-----------
Only ``sampler=greedy`` (the default option) sets ``temperature`` to 0. Every other option,
``top_k``, ``top_p``, ``min_p``, ``typical_p`` and the penalty- or bias-only options
(``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``,
``no_repeat_ngram_size``) included, leaves it at its neutral 1.0: the next token is drawn from
the model's own distribution, filtered by the chain. So ``sampler=top_p`` samples at
temperature 1.0 unless ``sampler.temperature`` says otherwise, and ``sampler=repetition_penalty``
samples; for a greedy chain with a penalty, select ``greedy`` and set the knob
(``sampler=greedy sampler.repetition_penalty=1.2``). Knobs set per request
(``engine.generate(top_p=0.9)``) change only those knobs: on a greedy config the chain stays
greedy until the request sets ``temperature`` above 0. ``temperature=0`` means greedy whatever
the selected option, as in vLLM.

Order
-----
The chain runs in ascending ``priority``. The built-ins, in the order of transformers' logits
processors (vLLM's for the OpenAI penalties):

====  ======================  =========================================================
 10   logit_bias              add a bias to chosen token ids
 12   repetition_penalty      CTRL's penalty over prompt and output
 14   frequency_penalty       minus penalty x times generated
 15   presence_penalty        minus penalty where generated at least once
 16   no_repeat_ngram_size    ban tokens that would repeat an n-gram
 20   temperature             logits / temperature (0 and 1 build nothing)
 30   top_k                   keep the k most likely (ties with the k-th kept)
 40   top_p                   keep the nucleus of mass top_p
 50   min_p                   keep p >= min_p x max p
 60   typical_p               keep the locally typical set of mass typical_p
 90   greedy                  keep the arg-max (when temperature == 0)
====  ======================  =========================================================

Penalties and biases use 10..19, temperature 20, truncations 30..89 and greedy 90, last. Two
samplers with the same priority run in the order of their registry names (ascending, as
``sorted()`` orders strings): a third-party sampler at priority 50 named ``eta`` runs before
``min_p``. Pick a free priority to be independent of names.

After the chain the next token is drawn from ``softmax(logits)`` (a greedy chain leaves one
finite logit, so the draw is the argmax).

Refusals
--------
A sampler whose ``check()`` returns reasons stops the chain from being built with a
:class:`~plugformer.core.errors.SamplerRefusedError`, ``sampler 'top_p' refused: top_p must be
in (0, 1], got 0.0``: the form of every kind's refusal (``RefusedError``), and a
``ValidationError`` (exit code 2), since sampling knobs are request arguments.
"""

from __future__ import annotations

import dataclasses
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

    priority: int  # position in the chain, ascending; built-ins use 10..90; ties: by name

    def check(self) -> list[str]:
        """Reasons these knob values are invalid (empty when valid)."""
        ...

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        """Process logits [B, V] (float32) into logits [B, V]; ``-inf`` removes a token."""
        ...


def knob(params: Any, name: str, default: Any) -> Any:
    """A knob's value from a params object, or ``default`` when no plugin declares it."""
    return getattr(params, name, default)


def neutral_value(f: dataclasses.Field) -> Any:
    """A knob's neutral value (the one that builds nothing): ``metadata["off"]`` when its
    default is active, else its default (``"???"``, Hydra's missing value, when it has none)."""
    if "off" in f.metadata:
        return f.metadata["off"]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "???"


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
