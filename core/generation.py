"""The generation loop: batched prefill and decode through the static KV cache, stopping
rules, UTF-8-safe incremental detokenization and logprobs.

Prompts of different lengths are left-padded into one batch; each row keeps its own positions
(0..len-1), its own padding mask and its own random generator, so a row gives the same tokens
alone or inside a batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from plugformer.core.errors import ValidationError
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.interfaces.tokenizer import Tokenizer
from plugformer.core.model.kv_cache import KVCache, cache_dtype
from plugformer.core.sampling import SamplerChain

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512
MAX_LOGPROBS = 20


@dataclass
class Request:
    """Validated options of one ``generate`` call."""

    chain: SamplerChain
    max_new_tokens: int | None  # None: as many as the context allows (up to the default)
    default_max_new_tokens: int
    min_new_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None  # top-n alternatives per token (0: only the chosen token's)
    seeds: list[int] = field(default_factory=list)  # one per prompt


def _positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def make_request(
    chain: SamplerChain,
    vocab_size: int,
    n_prompts: int,
    *,
    max_new_tokens: int | None,
    default_max_new_tokens: int,
    min_new_tokens: int = 0,
    ignore_eos: bool = False,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    logprobs: int | None = None,
    seed: int | list[int] | None = None,
    default_seed: int = 0,
) -> Request:
    """Check every per-request option up front; each error names the option and its range."""
    if max_new_tokens is not None:
        _positive_int("max_new_tokens", max_new_tokens, 1)
    min_new = _positive_int("min_new_tokens", min_new_tokens, 0)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise ValidationError(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    for s in stops:
        if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
            raise ValidationError(
                f"stop: each stop string must be a non-empty str of at most {MAX_STOP_CHARS} "
                f"characters, got {s!r}"
            )
    stop_ids = list(stop_token_ids or [])
    for t in stop_ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise ValidationError(
                f"stop_token_ids: {t!r} is outside the vocabulary [0, {vocab_size})"
            )
    if logprobs is not None and (
        isinstance(logprobs, bool)
        or not isinstance(logprobs, int)
        or not 0 <= logprobs <= MAX_LOGPROBS
    ):
        raise ValidationError(
            f"logprobs: expected an integer in [0, {MAX_LOGPROBS}], got {logprobs!r}"
        )
    seeds = seed if isinstance(seed, list) else [default_seed if seed is None else seed] * n_prompts
    if len(seeds) != n_prompts or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds
    ):
        raise ValidationError(f"seed: expected an int or a list of {n_prompts} ints, got {seed!r}")
    if not isinstance(ignore_eos, bool):
        raise ValidationError(f"ignore_eos: expected a bool, got {ignore_eos!r}")
    return Request(
        chain, max_new_tokens, default_max_new_tokens, min_new, ignore_eos, stops, stop_ids,
        logprobs, list(seeds),
    )  # fmt: skip


class IncrementalDecoder:
    """Text deltas from token ids, UTF-8 safe: a character split over several tokens appears
    once its last token arrives (the prefix/read-offset scheme used by vLLM and TGI)."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer  # None: a checkpoint without a tokenizer, ids only
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        if self.tokenizer is None:
            return ""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        now = self.tokenizer.decode(self.ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before) :]
        return ""


@dataclass
class Row:
    """The state of one sequence in a batch."""

    prompt_ids: list[int]
    generator: torch.Generator
    decoder: IncrementalDecoder
    budget: int  # max new tokens for this row
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded text of token_ids (stop strings cut off)
    shown: int = 0  # characters of text already handed out by the stream
    finish_reason: str | None = None  # "stop" | "length"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


def new_row(
    ids: list[int],
    seed: int,
    req: Request,
    ctx: int,
    tokenizer: Tokenizer | None,
    device: torch.device | str,
) -> Row:
    """A row for prompt ``ids`` in a context of ``ctx``: its token budget (refused when the
    prompt leaves no room or ``max_new_tokens`` does not fit) and its seeded generator."""
    room = ctx - len(ids)
    if room <= 0:
        raise ValidationError(f"prompt: {len(ids)} tokens leave no room in the context of {ctx}")
    if req.max_new_tokens is not None and req.max_new_tokens > room:
        raise ValidationError(
            f"max_new_tokens: {len(ids)} prompt tokens + {req.max_new_tokens} new tokens "
            f"exceed the context of {ctx}"
        )
    budget = req.max_new_tokens or min(req.default_max_new_tokens, room)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return Row(ids, g, IncrementalDecoder(tokenizer), budget)


def _holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters could still begin a stop string (kept back from streams)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


class BatchRun:
    """One batched generation: ``for deltas in run.steps(): ...`` then read ``run.rows``.

    Each step yields ``(row index, text delta)`` for every row that produced a token."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        tokenizer: Tokenizer | None,
        eos_ids: set[int],
        prompts: list[list[int]],
        req: Request,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model, self.spec, self.tok, self.req = model, spec, tokenizer, req
        self.device, self.dtype = device, dtype
        self.rules = Rules(tokenizer, eos_ids, req)
        self.eos, self.stop_ids = self.rules.eos, self.rules.stop_ids
        ctx = spec.max_seq_len
        self.rows: list[Row] = []
        for ids, seed in zip(prompts, req.seeds, strict=True):
            self.rows.append(new_row(ids, seed, req, ctx, tokenizer, device))

    def steps(self) -> Iterator[list[tuple[int, str]]]:
        rows, device = self.rows, self.device
        b = len(rows)
        longest = max(len(r.prompt_ids) for r in rows)
        budget = max(r.budget for r in rows)
        ids = torch.zeros((b, longest), dtype=torch.long, device=device)
        valid = torch.zeros((b, longest), dtype=torch.bool, device=device)
        for i, r in enumerate(rows):  # left padding: every row's last prompt token is aligned
            n = len(r.prompt_ids)
            ids[i, longest - n :] = torch.tensor(r.prompt_ids, device=device)
            valid[i, longest - n :] = True
        lengths = valid.sum(dim=1)  # [B]
        positions = (torch.cumsum(valid, dim=1) - 1).clamp(min=0)  # [B, S]
        padded = not bool(valid.all())
        cache = KVCache(b, longest + budget, cache_dtype(self.dtype, device), device)
        mask = valid if padded else None
        logits = self.model(ids, positions, cache, mask, last_only=True)[:, -1]  # [B, V]
        history, hist_valid = ids, valid
        prompt_len = torch.full((b,), longest, device=device)
        for step in range(budget):
            active = [i for i, r in enumerate(rows) if r.finish_reason is None]
            if not active:
                return
            logits = logits.float()  # NaN / +inf refused once, by the chain (SamplerChain.process)
            if step < self.req.min_new_tokens:
                banned = sorted(self.eos | self.stop_ids)
                if banned:
                    logits[:, banned] = float("-inf")
            ctx = SamplingContext(
                history, prompt_len, rows[0].generator, hist_valid if padded else None
            )
            tokens = self.req.chain.sample(logits, ctx, [r.generator for r in rows])  # [B]
            out: list[tuple[int, str]] = []
            raw = torch.log_softmax(logits, dim=-1) if self.req.logprobs is not None else None
            for i in active:
                out.append((i, self._accept(rows[i], int(tokens[i]), raw, i)))
            yield out
            if step + 1 == budget or all(r.finish_reason for r in rows):
                return
            history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
            ones = torch.ones((b, 1), dtype=torch.bool, device=device)
            hist_valid = torch.cat([hist_valid, ones], dim=1)
            pos = (lengths + step).unsqueeze(1)  # [B, 1]
            logits = self.model(tokens.unsqueeze(1), pos, cache, last_only=True)[:, -1]

    def _accept(self, row: Row, token: int, raw: torch.Tensor | None, i: int) -> str:
        return self.rules.accept(row, token, None if raw is None else raw[i])


class Rules:
    """What happens to a sampled token: recorded with its logprobs, checked against EOS, the
    stop token ids, the token budget and the stop strings (which may span tokens), and turned
    into the text delta that may be shown now. Shared by :class:`BatchRun` and the serving
    scheduler (``core/serve/``)."""

    def __init__(self, tokenizer: Tokenizer | None, eos: set[int], req: Request) -> None:
        self.tok, self.req = tokenizer, req
        self.eos = set() if req.ignore_eos else set(eos)
        self.stop_ids = set(req.stop_token_ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids) if self.tok is not None else ""

    def _final_text(self, decoder: IncrementalDecoder, ids: list[int]) -> str:
        """The whole text of a finished row, decoded at once (as a tokenizer's own ``decode``
        spaces it), without a character the budget or a stop token cut in half: when the
        tokens after the last whole character end in a replacement character, they are an
        unfinished UTF-8 sequence and are left out."""
        text = self._decode(ids)
        if text.endswith("\ufffd") and decoder.read < len(ids):
            return self._decode(ids[: decoder.read])
        return text

    def accept(self, row: Row, token: int, raw: torch.Tensor | None) -> str:
        """Record ``token`` for ``row`` (``raw``: the row's log-probabilities [V], when asked
        for); returns the text that may be shown now."""
        row.token_ids.append(token)
        if raw is not None:
            row.logprobs.append(float(raw[token]))
            if self.req.logprobs:
                values, indices = torch.topk(raw, self.req.logprobs)
                row.top_logprobs.append(
                    {int(t): float(v) for t, v in zip(indices, values, strict=True)}
                )
        if token in self.eos or token in self.stop_ids:
            row.finish_reason = "stop"
            row.stop_reason = token if token in self.stop_ids else None
            row.text = self._final_text(row.decoder, row.token_ids[:-1])
        else:
            row.text += row.decoder.push(token)
            if len(row.token_ids) >= row.budget:
                row.finish_reason = "length"
                row.text = self._final_text(row.decoder, row.token_ids)
        for s in self.req.stop:  # a stop string may span token boundaries
            at = row.text.find(s, max(0, row.shown - len(s)))
            if at >= 0:
                row.text = row.text[:at]
                row.finish_reason, row.stop_reason = "stop", s
        if row.finish_reason is None:
            safe = len(row.text) - _holdback(row.text, self.req.stop)
        else:
            safe = len(row.text)
        delta = row.text[row.shown : max(safe, row.shown)]
        row.shown = max(safe, row.shown)
        return delta
