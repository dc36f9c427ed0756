"""Logit bias (OpenAI API ``logit_bias``; vLLM's ``SamplingParams.logit_bias``): add a fixed
bias to the logits of chosen token ids (``-100`` practically bans a token, ``+100`` forces it).

Matches transformers' ``SequenceBiasLogitsProcessor`` with single-token sequences
(``sequence_bias={(42,): -100.0}``). From the command line:
``sampler.logit_bias={42:-100,7:2.5}``; from Python: ``logit_bias={42: -100.0}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.errors import ValidationError
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class LogitBiasConfig(SamplerConfig):
    name: str = "logit_bias"
    # {token id: bias}; None (or {}) disables. Typed Any because OmegaConf can neither merge an
    # override into a struct-mode dict[int, float] default nor into a None Optional dict; an
    # Any node set to None takes `sampler.logit_bias={42:-100}` whole, int keys kept.
    logit_bias: Any = None


def _token_id(key: Any) -> int | None:
    """A token id from an int key or a decimal string key ("42", as JSON would give)."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit():
        return int(key)
    return None


class LogitBias:
    """logits[:, id] += bias for every (id, bias) of ``logit_bias``."""

    priority = 10  # first, as transformers' sequence_bias and vLLM's logit_bias

    def __init__(self, bias: Any) -> None:
        self.bias = bias
        self.ids: list[int] = []
        self.values: list[float] = []
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._vocab = 0

    def check(self) -> list[str]:
        if not isinstance(self.bias, dict):
            return [f"logit_bias must be a dict of token id -> bias, got {self.bias!r}"]
        ids: list[int] = []
        values: list[float] = []
        seen: set[int] = set()
        for key, value in self.bias.items():
            token = _token_id(key)
            if token is None:
                return [f"logit_bias keys must be token ids (integers >= 0), got {key!r}"]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                return [f"logit_bias values must be finite numbers, got {value!r} for {key!r}"]
            if token in seen:
                return [f"logit_bias lists token id {token} twice"]
            seen.add(token)
            ids.append(token)
            values.append(float(value))
        self.ids, self.values, self._tensors = ids, values, None
        return []

    def check_vocab(self, vocab_size: int) -> list[str]:
        """Reasons the token ids do not fit a vocabulary of ``vocab_size`` (empty when they do)."""
        bad = sorted(i for i in self.ids if i >= vocab_size)
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            return [f"logit_bias token ids must be in [0, {vocab_size - 1}], got {shown}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]. The vocabulary size is only known here: refuse ids beyond it (once
        # per vocabulary size and device; the bias tensors are kept for the next tokens).
        vocab = logits.shape[-1]
        tensors = self._tensors
        if tensors is None or tensors[0].device != logits.device or self._vocab != vocab:
            reasons = self.check() or self.check_vocab(vocab)
            if reasons:
                raise ValidationError(reasons[0])
            tensors = (
                torch.tensor(self.ids, dtype=torch.long, device=logits.device),
                torch.tensor(self.values, dtype=logits.dtype, device=logits.device),
            )
            self._tensors, self._vocab = tensors, vocab
        ids, values = tensors  # [N], [N]; ids are distinct
        out = logits.clone()
        out[:, ids] += values
        return out


def build(params: Any) -> LogitBias | None:
    bias = knob(params, "logit_bias", None)
    return None if bias is None or (isinstance(bias, dict) and not bias) else LogitBias(bias)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "logit_bias", build, LogitBiasConfig)
