"""The generation loop: seeds, stopping, batching, streaming, logprobs, validation."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.core.generation import IncrementalDecoder
from plugformer.core.tokenizers.byte import ByteTokenizer


@pytest.fixture(scope="module")
def tiny():
    # sharpen attention so that positions and masks matter in a random model
    engine = plugformer.Engine.from_overrides(["model=tiny", "model.seed=3"])
    with torch.no_grad():
        for layer in engine.model.layers:
            layer.attn.wq.weight.mul_(8)
    return engine


@pytest.fixture(scope="module")
def smol():
    return plugformer.Engine.from_overrides([])


def test_same_seed_same_tokens_different_seed_different(tiny):
    kw = {"max_new_tokens": 24, "temperature": 1.0, "ignore_eos": True}
    a = tiny.generate("hello", seed=1, **kw).token_ids
    b = tiny.generate("hello", seed=1, **kw).token_ids
    c = tiny.generate("hello", seed=2, **kw).token_ids
    assert a == b
    assert a != c


def test_seeded_row_is_the_same_alone_and_in_a_batch(tiny):
    kw = {"max_new_tokens": 16, "temperature": 1.0, "top_k": 40, "ignore_eos": True}
    alone = tiny.generate("a longer prompt here", seed=7, **kw).token_ids
    batch = tiny.generate(["hi", "a longer prompt here", "x"], seed=[1, 7, 3], **kw)
    assert batch[1].token_ids == alone


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_batched_greedy_equals_one_by_one(request, which):
    engine = request.getfixturevalue(which)
    prompts = ["hi", "What is the capital of France?", "Name three colours of the rainbow."]
    kw = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    batch = engine.generate(prompts, **kw)
    for prompt, got in zip(prompts, batch, strict=True):
        alone = engine.generate(prompt, **kw)
        assert got.token_ids == alone.token_ids, prompt
        assert got.text == alone.text


def test_eos_from_the_model_stops(smol):
    out = smol.generate("What is the capital of France?", max_new_tokens=40, temperature=0.0)
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert out.token_ids[-1] in smol.tokenizer.eos_token_ids
    assert "<|im_end|>" not in out.text and out.text == "The capital of France is Paris."


def test_ignore_eos_and_min_new_tokens(smol):
    q = "What is the capital of France?"
    natural = smol.generate(q, max_new_tokens=40, temperature=0.0)
    n = len(natural.token_ids)
    ignored = smol.generate(q, max_new_tokens=n + 5, temperature=0.0, ignore_eos=True)
    assert ignored.finish_reason == "length" and len(ignored.token_ids) == n + 5
    assert ignored.token_ids[: n - 1] == natural.token_ids[:-1]
    assert ignored.token_ids[n - 1] == natural.token_ids[-1]  # EOS, then it went on
    held = smol.generate(q, max_new_tokens=40, temperature=0.0, min_new_tokens=n + 3)
    eos = set(smol.tokenizer.eos_token_ids)
    assert len(held.token_ids) >= n + 3
    assert not eos & set(held.token_ids[: n + 3])


def test_stop_token_ids(smol):
    natural = smol.generate("What is the capital of France?", max_new_tokens=20, temperature=0.0)
    stop_id = natural.token_ids[3]
    out = smol.generate(
        "What is the capital of France?", max_new_tokens=20, temperature=0.0,
        stop_token_ids=[stop_id],
    )  # fmt: skip
    assert out.token_ids == natural.token_ids[:4]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.text == smol.tokenizer.decode(natural.token_ids[:3])


def test_stop_string_across_token_boundaries(smol):
    natural = smol.generate("What is the capital of France?", max_new_tokens=20, temperature=0.0)
    tok = smol.tokenizer
    pieces = [tok.decode([t]) for t in natural.token_ids]
    assert "".join(pieces[:4]) == tok.decode(natural.token_ids[:4])
    # a stop string that starts inside one token and ends inside the next
    boundary = len(pieces[0]) + len(pieces[1])
    stop = natural.text[boundary - 2 : boundary + 2]
    assert len(pieces[1]) >= 2 and len(pieces[2]) >= 2
    out = smol.generate(
        "What is the capital of France?", max_new_tokens=20, temperature=0.0, stop=[stop]
    )
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == natural.text[: boundary - 2]
    assert stop not in out.text
    streamed = "".join(
        d for d, _ in smol.stream("What is the capital of France?", 20, temperature=0.0, stop=stop)
    )
    assert streamed == out.text


def test_context_limit(tiny):
    long_prompt = "x" * 250  # 251 tokens with BOS; the tiny context is 256
    out = tiny.generate(long_prompt, temperature=0.0, ignore_eos=True)  # default 32, capped
    assert len(out.token_ids) == 256 - 251 and out.finish_reason == "length"
    with pytest.raises(plugformer.ValidationError, match="max_new_tokens: 251 prompt tokens"):
        tiny.generate(long_prompt, max_new_tokens=10)


def test_stream_deltas_add_up_to_the_text(smol):
    q = "Write one sentence about the sea, with an emoji."
    deltas = list(smol.stream(q, 30, temperature=0.0))
    out = smol.generate(q, max_new_tokens=30, temperature=0.0)
    assert "".join(d for d, _ in deltas) == out.text
    assert [t for _, t in deltas] == out.token_ids


def test_incremental_decoder_is_utf8_safe():
    dec = IncrementalDecoder(ByteTokenizer())
    text = "é😀a"
    deltas = [dec.push(b) for b in text.encode("utf-8")]
    assert deltas == ["", "é", "", "", "", "😀", "a"]


def test_logprobs_equal_the_full_forward(tiny):
    out = tiny.generate("abc", max_new_tokens=6, temperature=0.0, ignore_eos=True, logprobs=3)
    ids = out.prompt_token_ids + out.token_ids
    full = torch.log_softmax(tiny.logits([ids])[0], dim=-1)  # [S, V]
    n = len(out.prompt_token_ids)
    for i, token in enumerate(out.token_ids):
        row = full[n - 1 + i]
        # the cached decode and the full pass agree to fp32 rounding
        assert out.logprobs[i] == pytest.approx(float(row[token]), abs=1e-4)
        top = out.top_logprobs[i]
        assert list(top) == row.topk(3).indices.tolist()
        assert token == next(iter(top))  # greedy: the chosen token is the most likely


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10_000}, "max_new_tokens"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"logprobs": 99}, "logprobs"),
        ({"seed": [1, 2]}, "seed"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"no_such_knob": 1}, "no_such_knob"),
    ],
)
def test_bad_options_are_refused_and_the_engine_keeps_working(tiny, kwargs, message):
    with pytest.raises(plugformer.ValidationError, match=message):
        tiny.generate("hello", **kwargs)
    assert tiny.generate("hello", max_new_tokens=3).token_ids


@pytest.mark.parametrize("prompt", ["", [], [10**6], [-1]])
def test_bad_prompts_are_refused(tiny, prompt):
    with pytest.raises(plugformer.ValidationError, match=r"prompt|token_ids"):
        tiny.generate(prompt)


def test_nan_logits_end_the_request_with_a_clear_error(tiny, monkeypatch):
    real = tiny.model.forward

    def broken(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(tiny.model, "forward", broken)
    with pytest.raises(plugformer.ValidationError, match="NaN logits"):
        tiny.generate("hello", max_new_tokens=3)
    monkeypatch.undo()
    assert len(tiny.generate("hello", max_new_tokens=3, ignore_eos=True).token_ids) == 3
