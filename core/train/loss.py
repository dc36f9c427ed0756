"""The training loss: summed next-token cross-entropy over the scored tokens, computed a chunk
of tokens at a time so that the logits of the whole batch never exist.

The decoder runs to its last hidden states; only the positions whose next token is scored
(``labels != -100``) go on, in chunks of :data:`CHUNK_LOGITS` logits, through the final norm,
the head and the cross-entropy, each chunk under activation checkpointing (its logits are
recomputed in backward instead of kept). At SmolLM2's 49,152-token vocabulary and 2,048 tokens
a step that is 0.4 GB of float32 logits, their log-softmax and their gradient (1.2 GB) replaced
by one chunk's (64 MB each). The value equals the full cross-entropy up to the order in which
the token losses are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from plugformer.core.model.decoder import Decoder

#: logits per chunk (positions x vocabulary): 16 Mi float32 = 64 MiB
CHUNK_LOGITS = 1 << 24


def _chunk_loss(decoder: Decoder, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # h: [1, n, hidden], target [n] -> summed loss (a 0-d tensor)
    logits = decoder.finish(h)[0].float()
    return F.cross_entropy(logits, target, reduction="sum")


def chunked_token_loss(
    model: torch.nn.Module,
    decoder: Decoder,
    ids: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    ignore: int,
) -> tuple[torch.Tensor, int]:
    """(summed token cross-entropy, scored tokens): ``model`` is what runs the forward (the
    decoder itself, or a data-parallel wrapper of it), ``decoder`` the decoder whose
    ``finish`` (final norm and head) turns hidden states into logits. ids, labels, valid
    [B, S] as for :func:`plugformer.core.train.trainer.token_loss`."""
    mask = None if bool(valid.all()) else valid
    h = model(ids, None, None, mask, hidden_only=True)  # [B, S, hidden]
    target = labels[:, 1:]  # [B, S-1]: the token at i predicts label i + 1
    scored = target != ignore
    h = h[:, :-1][scored]  # [n, hidden]
    target = target[scored]  # [n]
    n = int(target.numel())
    if n == 0:
        return h.sum() * 0.0, 0
    vocab = int(decoder.spec.vocab_size)
    step = max(1, CHUNK_LOGITS // max(1, vocab))
    total: torch.Tensor | None = None
    for start in range(0, n, step):
        part = h[start : start + step].unsqueeze(0)
        t = target[start : start + step]
        if torch.is_grad_enabled():
            loss = checkpoint(_chunk_loss, decoder, part, t, use_reentrant=False)
        else:
            loss = _chunk_loss(decoder, part, t)
        total = loss if total is None else total + loss
    assert total is not None
    return total, n
