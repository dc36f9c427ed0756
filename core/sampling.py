"""The sampler chain: builds the active sampler plugins from sampling params and draws tokens.

Sampling params are one flat dataclass: the union of every registered sampler's knobs (each
plugin's config fields), with the selected option's defaults. See
:mod:`plugformer.core.interfaces.sampler`.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

import torch

from plugformer.core.errors import PluginError, SamplerRefusedError, ValidationError
from plugformer.core.interfaces.sampler import (
    Sampler,
    SamplerConfig,
    SamplingContext,
    neutral_value,
)
from plugformer.core.registry import Registry


def _copier(value: Any) -> Any:
    return lambda: copy.deepcopy(value)


def sampler_knobs(registry: Registry) -> dict[str, tuple[Any, Any, str]]:
    """Every sampler knob: name -> (type, neutral value, first plugin that declares it).

    The registry refuses conflicting declarations when a sampler registers
    (:class:`~plugformer.core.errors.DuplicateKnobError`); the check here guards registries
    filled some other way."""
    knobs: dict[str, tuple[Any, Any, str]] = {}
    for entry in registry.entries("sampler"):
        hints = typing.get_type_hints(entry.config)
        for f in dataclasses.fields(entry.config):
            if f.name == "name":
                continue
            off = neutral_value(f)
            if f.name in knobs:
                tp, other_off, owner = knobs[f.name]
                if tp != hints[f.name] or other_off != off:
                    raise PluginError(
                        f"sampler {entry.name!r} declares knob {f.name!r} as {hints[f.name]} "
                        f"(off={off!r}), but sampler {owner!r} declared it as {tp} "
                        f"(off={other_off!r})"
                    )
                continue
            knobs[f.name] = (hints[f.name], off, entry.name)
    return knobs


def sampler_options(registry: Registry) -> dict[str, type]:
    """One params dataclass per registered sampler: every knob, neutral unless that sampler
    declares it, in which case it has that sampler's default."""
    knobs = sampler_knobs(registry)
    options = {}
    for entry in registry.entries("sampler"):
        own = {f.name: f for f in dataclasses.fields(entry.config) if f.name != "name"}
        fields: list[Any] = [("name", str, dataclasses.field(default=entry.name))]
        for knob, (tp, off, _) in knobs.items():
            f = own.get(knob)
            if f is not None and f.default is dataclasses.MISSING:
                if f.default_factory is dataclasses.MISSING:
                    fields.append((knob, tp, dataclasses.field(default="???")))
                else:
                    fields.append((knob, tp, dataclasses.field(default_factory=f.default_factory)))
                continue
            value = f.default if f is not None else off
            if isinstance(value, (list, dict)):
                fields.append((knob, tp, dataclasses.field(default_factory=_copier(value))))
            else:
                fields.append((knob, tp, dataclasses.field(default=value)))
        options[entry.name] = dataclasses.make_dataclass(
            f"SamplingParams_{entry.name}", fields, bases=(SamplerConfig,)
        )
    return options


def with_overrides(params: Any, overrides: dict[str, Any]) -> Any:
    """``params`` with per-request knob values; an unknown knob is a :class:`ValidationError`."""
    known = {f.name for f in dataclasses.fields(params)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValidationError(
            f"unknown sampling parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    return dataclasses.replace(params, **overrides) if overrides else params


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token id [1] drawn from ``probs`` [V] by inverse transform sampling: one uniform
    number per row, against the cumulative distribution (float64, so its rounding is ~1e-16 of
    a token's probability). ``torch.multinomial`` draws one exponential per vocabulary entry
    instead: 0.74 ms at V = 49,152 on the 2-vCPU machine of DESIGN.md, this 0.04 ms. A token of
    probability 0 is never drawn: the cumulative sum does not rise at it."""
    cdf = probs.double().cumsum(-1)  # [V]
    total = cdf[-1:]  # [1], 1 up to rounding
    u = torch.rand(1, dtype=torch.float64, generator=generator, device=probs.device) * total
    token = torch.searchsorted(cdf, u, right=True)  # the first index with cdf > u
    # u * total may round up to total: fall back to the last token of nonzero probability
    return torch.minimum(token, torch.searchsorted(cdf, total))


class SamplerChain:
    """The active samplers for ``params``, in chain order: ascending ``priority``, ties in
    registry-name order; validated on construction (a sampler whose ``check()`` has reasons
    raises :class:`~plugformer.core.errors.SamplerRefusedError`)."""

    def __init__(self, registry: Registry, params: Any) -> None:
        self.params = params
        built: list[tuple[int, str, Sampler]] = []
        for entry in registry.entries("sampler"):  # sorted by name
            sampler = entry.builder(params)
            if sampler is None:
                continue
            reasons = list(sampler.check())
            if reasons:
                raise SamplerRefusedError(entry.name, reasons)
            built.append((sampler.priority, entry.name, sampler))
        built.sort(key=lambda b: (b[0], b[1]))
        self.samplers = [sampler for _, _, sampler in built]
        #: the registry names of :attr:`samplers`, in chain order
        self.sampler_names = [name for _, name, _ in built]

    @property
    def names(self) -> list[str]:
        return [type(s).__name__ for s in self.samplers]

    def process(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        """Run the chain over logits [B, V]; returns processed float32 logits [B, V]."""
        # -inf is a masked token; NaN and +inf are refused. One reduction finds both (amax
        # propagates NaN), instead of two full isnan/isposinf passes (~45 us at V = 49,152).
        if not bool((logits.amax(dim=-1) < float("inf")).all()):
            bad = "NaN" if torch.isnan(logits).any() else "infinite"
            raise ValidationError(f"the model produced {bad} logits; generation stopped")
        logits = logits.float()
        for sampler in self.samplers:
            logits = sampler(logits, ctx)
        return logits

    def sample(
        self,
        logits: torch.Tensor,
        ctx: SamplingContext,
        generators: list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Next token ids [B] drawn from the processed logits [B, V], each row with its own
        generator (``generators``, else ``ctx.generator`` for every row), so a row draws the
        same tokens alone or inside a batch."""
        processed = self.process(logits, ctx)
        # a row's maximum is -inf when every token is masked, NaN or +inf when a processor
        # produced one: one reduction instead of a full isfinite pass over the probabilities
        if not bool(torch.isfinite(processed.amax(dim=-1)).all()):
            raise ValidationError("sampling produced an invalid distribution (all tokens masked)")
        if self.deterministic(processed):
            return processed.argmax(dim=-1)
        probs = torch.softmax(processed, dim=-1)
        gens = generators or [ctx.generator] * probs.shape[0]
        return torch.cat([draw(probs[b], g) for b, g in enumerate(gens)])

    @staticmethod
    def deterministic(processed: torch.Tensor) -> bool:
        """Whether every row kept exactly one token (greedy): no draw needed."""
        # rows hold finite values and -inf only (checked in sample): count the -inf ones
        vocab = processed.shape[-1]
        return bool((torch.isneginf(processed).sum(dim=-1) == vocab - 1).all())
