"""Continuous batching (core/serve/): every request gives the tokens it gives alone through
``Engine.generate`` — joining mid-flight, batched with others, prefilled in chunks, preempted
and recomputed — and the block pool balances after load, aborts and faults.

Equality is asserted exactly (token ids): each row is computed at its own positions against its
own keys (padding and other rows masked with -inf, which adds exact zeros), so only the
summation order of the batched matmuls can differ, far below a greedy margin on these models.
"""

from __future__ import annotations

import random

import pytest

import plugformer
from plugformer.core.errors import ValidationError
from plugformer.core.serve.scheduler import Scheduler


@pytest.fixture(scope="module")
def tiny():
    return plugformer.Engine.from_overrides(["model=tiny"])


def _requests(
    n: int, seed: int, vocab: int = 256, stops: bool = False
) -> list[tuple[list[int], dict]]:
    """Mixed lengths and sampler settings: greedy, temperature + top-p with a seed, top-k with
    a repetition penalty; with ``stops``, some end at stop token ids after a minimum."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 60))]
        kw: dict = {"max_new_tokens": rng.randint(1, 24), "ignore_eos": True}
        if i % 3 == 1:
            kw.update(temperature=0.8, top_p=0.9, seed=1000 + i)
        elif i % 3 == 2:
            kw.update(temperature=1.2, top_k=20, seed=2000 + i, repetition_penalty=1.3)
        if stops and i % 4 == 0:
            kw.update(min_new_tokens=2, stop_token_ids=[rng.randrange(vocab) for _ in range(40)])
        out.append((ids, kw))
    return out


def _serve(s: Scheduler, reqs, every: int = 1) -> dict[str, list[int]]:
    """Add one request every ``every`` steps (staggered arrivals), run to the end; the
    tokens streamed per request."""
    got: dict[str, list[int]] = {}
    pending, step = list(enumerate(reqs)), 0
    while pending or s.has_work():
        if pending and step % every == 0:
            i, (ids, kw) = pending.pop(0)
            s.add_request(ids, request_id=str(i), **kw)
        for o in s.step():
            assert o.error is None, o
            if o.token_id is not None:
                got.setdefault(o.request_id, []).append(o.token_id)
        step += 1
        assert step < 10_000, "the scheduler made no progress"
    return got


@pytest.mark.parametrize(
    ("blocks", "seqs", "tokens", "every"),
    [(400, 8, 512, 1), (40, 4, 24, 2), (24, 6, 16, 1)],
    ids=["roomy", "chunked-prefill", "preempting"],
)
def test_every_request_gives_its_alone_tokens(tiny, blocks, seqs, tokens, every):
    reqs = _requests(18, seed=blocks, stops=True)
    alone = [tiny.generate(ids, **kw).token_ids for ids, kw in reqs]
    s = Scheduler(tiny, block_size=4, num_blocks=blocks, max_num_seqs=seqs,
                  max_num_batched_tokens=tokens)  # fmt: skip
    got = _serve(s, reqs, every)
    for i, want in enumerate(alone):
        assert got[str(i)] == want, i
    assert s.pool.free_blocks == s.pool.num_blocks  # every block back
    if blocks == 24:
        assert s.preemptions > 0  # the pool was too small for all: some were recomputed


def test_200_concurrent_requests_lose_and_duplicate_nothing(tiny):
    reqs = _requests(200, seed=7)
    s = Scheduler(tiny, block_size=8, num_blocks=120, max_num_seqs=16, max_num_batched_tokens=128)
    for i, (ids, kw) in enumerate(reqs):
        s.add_request(ids, request_id=str(i), **kw)
    got: dict[str, list[int]] = {}
    finished: list[str] = []
    while s.has_work():
        for o in s.step():
            if o.token_id is not None:
                got.setdefault(o.request_id, []).append(o.token_id)
            if o.finished:
                finished.append(o.request_id)
    assert sorted(finished) == sorted(str(i) for i in range(200))  # each finished once
    for i, (_, kw) in enumerate(reqs):
        assert len(got[str(i)]) == kw["max_new_tokens"]  # ignore_eos: exactly the budget
    assert s.pool.free_blocks == s.pool.num_blocks


def test_abort_frees_blocks_at_once(tiny):
    s = Scheduler(tiny, block_size=4, num_blocks=64, max_num_seqs=4)
    s.add_request(list(range(30)), request_id="a", max_new_tokens=50, ignore_eos=True)
    s.add_request(list(range(10)), request_id="b", max_new_tokens=5, ignore_eos=True)
    s.step()
    assert s.pool.free_blocks < 64
    held_b = len(next(q for q in s.running if q.request_id == "b").blocks)
    assert s.abort("a")
    assert s.pool.free_blocks == 64 - held_b  # a's blocks back before any further step
    assert not s.abort("a")
    out = s.step()
    assert any(o.request_id == "a" and o.finish_reason == "abort" for o in out)
    while s.has_work():
        s.step()
    assert s.pool.free_blocks == 64


def test_a_prompt_that_never_fits_is_refused_and_others_continue(tiny):
    s = Scheduler(tiny, block_size=4, num_blocks=8, max_num_seqs=4)  # 32 token slots
    with pytest.raises(ValidationError, match="need 10 KV blocks of 4; the pool has 8"):
        s.add_request(list(range(36)))
    s.add_request([1, 2, 3], request_id="ok", max_new_tokens=4, ignore_eos=True)
    outs = []
    while s.has_work():
        outs += s.step()
    assert [o.token_id for o in outs if o.request_id == "ok"] == tiny.generate(
        [1, 2, 3], max_new_tokens=4, ignore_eos=True
    ).token_ids


def test_a_sequence_outgrowing_the_whole_pool_ends_with_an_error(tiny):
    s = Scheduler(tiny, block_size=4, num_blocks=4, max_num_seqs=2)  # 16 token slots
    s.add_request([1, 2, 3], request_id="long", max_new_tokens=40, ignore_eos=True)
    outs = []
    while s.has_work():
        outs += s.step()
    last = [o for o in outs if o.request_id == "long"][-1]
    assert last.finished and last.finish_reason == "error" and "do not fit the pool" in last.error
    assert s.pool.free_blocks == 4


def test_nan_in_one_row_ends_that_request_only(tiny, monkeypatch):
    s = Scheduler(tiny, block_size=4, num_blocks=64, max_num_seqs=4)
    for name in ("x", "y"):
        s.add_request([5, 6, 7], request_id=name, max_new_tokens=6, ignore_eos=True)
    forward = s._forward

    def poisoned(plan):
        logits = forward(plan)
        for i, (seq, _) in enumerate(plan):
            if seq.request_id == "x" and seq.row.token_ids:
                logits[i, 3] = float("nan")
        return logits

    monkeypatch.setattr(s, "_forward", poisoned)
    outs = []
    while s.has_work():
        outs += s.step()
    x = [o for o in outs if o.request_id == "x"]
    y = [o for o in outs if o.request_id == "y"]
    assert x[-1].finish_reason == "error" and "nan" in x[-1].error.lower() and len(x) == 2
    assert [o.token_id for o in y] == tiny.generate([5, 6, 7], max_new_tokens=6,
                                                    ignore_eos=True).token_ids  # fmt: skip
    assert s.pool.free_blocks == 64


def test_an_exception_in_a_step_fails_its_requests_and_the_loop_goes_on(tiny, monkeypatch):
    s = Scheduler(tiny, block_size=4, num_blocks=64, max_num_seqs=4)
    s.add_request([1, 2], request_id="first", max_new_tokens=3, ignore_eos=True)
    forward, calls = s._forward, []

    def flaky(plan):
        calls.append(len(plan))
        if len(calls) == 1:
            raise RuntimeError("a plugin failed")
        return forward(plan)

    monkeypatch.setattr(s, "_forward", flaky)
    out = s.step()
    assert [(o.request_id, o.finish_reason) for o in out] == [("first", "error")]
    assert "RuntimeError: a plugin failed" in out[0].error and s.pool.free_blocks == 64
    s.add_request([1, 2], request_id="second", max_new_tokens=3, ignore_eos=True)
    outs = []
    while s.has_work():
        outs += s.step()
    assert [o.token_id for o in outs] == tiny.generate([1, 2], max_new_tokens=3,
                                                       ignore_eos=True).token_ids  # fmt: skip


def test_priority_policy_admits_the_most_urgent_first(tiny):
    s = Scheduler(tiny, block_size=4, num_blocks=64, max_num_seqs=1, policy="priority")
    s.add_request([1], request_id="late", max_new_tokens=2, priority=5, ignore_eos=True)
    s.add_request([2], request_id="urgent", max_new_tokens=2, priority=0, ignore_eos=True)
    first = s.step()
    assert [o.request_id for o in first] == ["urgent"]
    with pytest.raises(ValidationError, match=r"scheduler\.policy"):
        Scheduler(tiny, policy="lifo")


def test_the_default_model_batches_text_requests_exactly(smollm2_gguf):
    engine = plugformer.Engine.from_overrides([])
    prompts = ["What is the capital of France?", "Write a haiku about rain.",
               "Count to five.", "Hi!"]  # fmt: skip
    opts = [{}, {"temperature": 0.7, "top_p": 0.9, "seed": 3}, {}, {"seed": 9, "temperature": 1.0}]
    alone = [
        engine.generate(p, max_new_tokens=12, **o).token_ids
        for p, o in zip(prompts, opts, strict=True)
    ]
    s = Scheduler(engine, max_num_seqs=4, max_num_batched_tokens=64)
    reqs = [(p, {"max_new_tokens": 12, **o}) for p, o in zip(prompts, opts, strict=True)]
    got = _serve(s, reqs, every=2)
    assert [got[str(i)] for i in range(4)] == alone
    assert s.pool.free_blocks == s.pool.num_blocks


@pytest.mark.parametrize("blocks", [200, 30], ids=["roomy", "evicting"])
def test_prefix_caching_reuses_shared_prompts_exactly(tiny, blocks):
    """Requests sharing a 41-token system prompt: later ones take its cached blocks and still
    give their alone tokens; with a small pool, cached blocks are evicted (LRU) as needed."""
    rng = random.Random(11)
    system = [rng.randrange(256) for _ in range(41)]
    reqs = []
    for i in range(16):
        tail = [rng.randrange(256) for _ in range(rng.randint(1, 12))]
        kw = {"max_new_tokens": rng.randint(1, 10), "ignore_eos": True}
        if i % 2:
            kw.update(temperature=0.8, seed=i)
        reqs.append(((system if i % 4 else system[:20]) + tail, kw))
    alone = [tiny.generate(ids, **kw).token_ids for ids, kw in reqs]
    s = Scheduler(tiny, block_size=4, num_blocks=blocks, max_num_seqs=3,
                  max_num_batched_tokens=32, prefix_caching=True)  # fmt: skip
    got = _serve(s, reqs, every=3)
    for i, want in enumerate(alone):
        assert got[str(i)] == want, i
    assert s.pool.hits >= 10 * (40 // 4)  # most requests took the 10 cached system blocks
    assert s.pool.free_blocks == s.pool.num_blocks  # cached but unused blocks count as free
    assert all(r == 0 for r in s.pool.refs)
