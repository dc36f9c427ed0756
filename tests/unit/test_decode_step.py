"""The fused float32 CPU decode steps (core/model/decode_step.py: rotary attention, RMSNorm): the
same tokens and log-probabilities as the ordinary path, and they stay out where they do not
apply."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.core.model import decode_step
from plugformer.core.model.decoder import SelfAttention
from plugformer.core.native import build as native

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native library: {native.unavailable_reason()}"
)
PROMPTS = [list(range(5, 25)), list(range(40, 47))]  # two lengths: left padding in a batch
GREEDY = {"temperature": 0.0, "ignore_eos": True, "max_new_tokens": 20, "logprobs": 3}


def _layers(engine):
    return [m for m in engine.model.modules() if isinstance(m, SelfAttention)]


def _run(engine, fused: bool):
    for m in _layers(engine):
        m._decode = False if fused else None  # False: decided on use; None: never
    for m in engine.model.modules():
        if hasattr(m, "plain_rms"):
            m.plain_rms = fused
    return engine.generate(PROMPTS, **GREEDY)


def test_the_fused_norm_is_the_norm_up_to_float32_rounding():
    engine = plugformer.Engine.from_overrides(["model=tiny"])
    norm = engine.model.layers[0].attn_norm
    x = torch.randn(3, 1, engine.spec.hidden_size) * 5
    with torch.no_grad():
        fused = decode_step.rms_norm(norm, x)
        assert fused is not None
        torch.testing.assert_close(fused, norm(x), rtol=1e-6, atol=1e-6)
        norm.plain_rms = False
        assert decode_step.rms_norm(norm, x) is None


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # GQA, 4 heads over 2 KV heads
        ["attention=mha", "model.spec.num_kv_heads=4"],
        ["positional=rope", "positional.rotary_dim=8"],  # partial rotary
        ["attention=gqa", "attention.sliding_window=6"],  # the window lives in the bias
        ["positional=rope_llama3", "model.spec.max_seq_len=256"],  # a scaled variant
    ],
)
def test_fused_steps_equal_the_ordinary_path(overrides):
    engine = plugformer.Engine.from_overrides(["model=tiny", *overrides])
    ordinary = _run(engine, fused=False)
    fused = _run(engine, fused=True)
    assert all(m._decode is not None for m in _layers(engine))  # it ran
    for a, b in zip(ordinary, fused, strict=True):
        assert a.token_ids == b.token_ids
        # the attention sums in another order: log-probabilities within float32 noise
        torch.testing.assert_close(
            torch.tensor(b.logprobs), torch.tensor(a.logprobs), rtol=1e-5, atol=1e-5
        )
        for x, y in zip(a.top_logprobs, b.top_logprobs, strict=True):
            assert x.keys() == y.keys()


@pytest.mark.parametrize(
    "overrides",
    [
        ["positional=alibi"],  # a per-head bias
        ["positional=rope", "positional.interleaved=true"],  # GPT-J pairs
        ["model.dtype=bfloat16"],  # float32 only
    ],
)
def test_the_step_stays_out_where_it_does_not_apply(overrides):
    engine = plugformer.Engine.from_overrides(["model=tiny", *overrides])
    engine.generate(PROMPTS[0], max_new_tokens=4, temperature=0.0)
    steps = [m._decode for m in _layers(engine)]
    if "model.dtype=bfloat16" in overrides:  # supported layer, but the step declines bf16
        assert all(s is not None for s in steps)
    else:
        assert all(s is None for s in steps)


def test_a_kernel_without_the_declaration_keeps_its_own_arithmetic(monkeypatch):
    engine = plugformer.Engine.from_overrides(["model=tiny"])
    kernel = _layers(engine)[0].kernel
    monkeypatch.setattr(kernel, "softmax_attention", False)
    engine.generate(PROMPTS[0], max_new_tokens=4, temperature=0.0)
    assert all(m._decode is None for m in _layers(engine))


def test_generations_in_two_threads_get_their_own_results():
    import threading

    engine = plugformer.Engine.from_overrides(["model=tiny"])
    want = [engine.generate(p, **GREEDY).token_ids for p in PROMPTS]
    got: dict[int, list[int]] = {}

    def run(i: int) -> None:
        for _ in range(3):
            got[i] = engine.generate(PROMPTS[i], **GREEDY).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[0], got[1]] == want
