"""``plugformer eval``: perplexity of a text with a fixed window and stride.

``plugformer eval perplexity data=<text file> [window=512] [stride=256] [overrides]`` prints
the number of scored tokens, then ``perplexity=<value>`` as its last line.

The text is tokenized once and scored in windows of ``window`` tokens starting every ``stride``
tokens (transformers' "perplexity of fixed-length models" recipe): each window predicts only the
tokens no earlier window has scored, so every token after the first is scored exactly once,
with up to ``window - stride`` tokens of context before it from the window's start.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plugformer.core.commands.options import positive_int, take_options
from plugformer.core.errors import ConfigError, UnknownNameError
from plugformer.core.progress import Progress


def read_text(path: str | Path, key: str = "data") -> str:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key}: {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {str(p)!r} as UTF-8 text: {exc}") from None
    return text


@torch.no_grad()
def perplexity(
    engine: Any, token_ids: list[int], window: int, stride: int, progress: bool = True
) -> tuple[float, int]:
    """(perplexity, number of scored tokens) of ``token_ids`` under ``engine``'s model."""
    if window < 2 or window > engine.spec.max_seq_len:
        raise ConfigError(
            f"window: {window} must be in [2, {engine.spec.max_seq_len}] (the model's context)"
        )
    if not 0 < stride <= window:
        raise ConfigError(f"stride: {stride} must be in [1, window={window}]")
    n = len(token_ids)
    if n < 2:
        raise ConfigError("data: the text has fewer than 2 tokens")
    ids = torch.tensor(token_ids, dtype=torch.long)
    starts = list(range(0, max(n - window, 0) + stride, stride))
    starts = [s for s in starts if s < n - 1]
    nll, count, scored_to = 0.0, 0, 1  # token 0 is never predicted
    label = f"perplexity ({len(starts)} windows of {window})"
    with Progress(label, len(starts), unit="windows") if progress else _Null() as bar:
        for start in starts:
            end = min(start + window, n)
            logits = engine.logits(ids[start:end].unsqueeze(0))[0, :-1].float()  # [L-1, V]
            targets = ids[start + 1 : end]
            first = max(scored_to - (start + 1), 0)  # skip targets scored by a previous window
            loss = F.cross_entropy(logits[first:], targets[first:], reduction="sum")
            nll += float(loss)
            count += int(targets[first:].numel())
            scored_to = end
            bar.update(1)
            if end == n:
                break
    return math.exp(nll / count), count


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


EVAL_TASKS = ("perplexity",)


def eval_command(args: list[str]) -> int:
    from plugformer.core.config import compose
    from plugformer.core.engine import Engine

    if not args or "=" in args[0]:
        raise ConfigError("eval: name a task, e.g. plugformer eval perplexity data=<text file>")
    task, rest = args[0], args[1:]
    if task not in EVAL_TASKS:
        raise UnknownNameError("eval task", task, EVAL_TASKS)
    options, overrides = take_options(rest, ("data", "window", "stride"))
    if not options.get("data"):
        raise ConfigError("data: missing value; set it with data=<text file>")
    text = read_text(options["data"])
    engine = Engine(compose(overrides))
    window = positive_int(options, "window", min(512, engine.spec.max_seq_len))
    stride = positive_int(options, "stride", max(window // 2, 1))
    ppl, count = perplexity(engine, engine.tokenizer.encode(text), window, stride)
    print(f"tokens={count} window={window} stride={stride}")
    print(f"perplexity={ppl:.4f}")
    sys.stdout.flush()
    return 0
