"""No repeated n-grams (Paulus, Xiong and Socher, 2018, "A Deep Reinforced Model for
Abstractive Summarization", arXiv:1705.04304): ban every token that would complete an n-gram of
size ``no_repeat_ngram_size`` already present in the sequence.

Matches transformers' ``NoRepeatNGramLogitsProcessor``: the prompt counts too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class NoRepeatNGramSizeConfig(SamplerConfig):
    name: str = "no_repeat_ngram_size"
    no_repeat_ngram_size: int = field(default=3, metadata={"off": 0})  # 0 disables


class NoRepeatNGram:
    """Mask the tokens that follow an earlier occurrence of the last ``n - 1`` tokens."""

    priority = 16  # after the penalties, before temperature (20), as in transformers

    def __init__(self, n: int) -> None:
        self.n = n

    def check(self) -> list[str]:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            return [f"no_repeat_ngram_size must be an integer >= 0 (0 disables), got {self.n!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V]; token_ids: [B, T]. Every position counts, prompt included, as in
        # transformers, except padding (ctx.valid False): an n-gram touching it is no n-gram.
        ids = ctx.token_ids.to(logits.device)
        n, length, vocab = self.n, ids.shape[-1], logits.shape[-1]
        if length < n:
            return logits  # no complete n-gram yet
        if ctx.valid is None:
            valid = torch.ones_like(ids, dtype=torch.bool)
        else:
            valid = ctx.valid.to(ids.device)
        # windows[b, i] = ids[b, i : i + n], the n-grams already complete
        windows = ids.unfold(-1, n, 1)  # [B, T - n + 1, n]
        suffix = ids[:, length - n + 1 :]  # [B, n - 1], the n-gram being written
        match = (windows[..., :-1] == suffix[:, None, :]).all(dim=-1)  # [B, T - n + 1]
        match &= valid.unfold(-1, n, 1).all(dim=-1) & valid[:, length - n + 1 :].all(-1, True)
        # non-matching windows (and ids past the vocabulary) point at a spare column
        banned = torch.where(match, windows[..., -1].clamp(max=vocab), vocab)
        mask = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
        mask.scatter_(-1, banned, True)
        return logits.masked_fill(mask[:, :vocab], float("-inf"))


def build(params: Any) -> NoRepeatNGram | None:
    n = knob(params, "no_repeat_ngram_size", 0)
    return None if n == 0 and not isinstance(n, bool) else NoRepeatNGram(n)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "no_repeat_ngram_size", build, NoRepeatNGramSizeConfig)
