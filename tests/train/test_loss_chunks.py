"""The chunked training loss equals the cross-entropy of the whole batch's logits, in value
and in every gradient, however the scored tokens split into chunks (float32: the same token
losses summed in another grouping, ~1e-7 relative)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer.core.train import loss as chunked
from plugformer.core.train.data import IGNORE
from plugformer.core.train.trainer import token_loss


@pytest.mark.parametrize("chunk_logits", [1 << 24, 7 * 258, 258])  # one chunk, 7 rows, 1 row
def test_chunks_equal_the_whole_batch(chunk_logits, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_LOGITS", chunk_logits)
    model = plugformer.Engine.from_overrides(["model=tiny"]).model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 258, (3, 17), generator=g)
    labels = ids.clone()
    labels[0, :5] = IGNORE  # a prompt
    valid = torch.ones(3, 17, dtype=torch.bool)
    valid[2, 11:] = False  # padding
    labels[~valid] = IGNORE
    total, n = token_loss(model, ids, labels, valid)
    total.backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids, None, None, valid)  # [B, S, V], all at once
    target = labels[:, 1:].reshape(-1)
    want = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), target, ignore_index=IGNORE, reduction="sum"
    )
    want.backward()
    assert n == int((target != IGNORE).sum())
    torch.testing.assert_close(total, want, rtol=1e-6, atol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, rtol=1e-5, atol=1e-6)
