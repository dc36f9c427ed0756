"""Real values of the built-in positional encodings (``rope``, ``alibi``, ``none``).

RoPE is checked against a float64 loop written from the RoFormer formula (Su et al., 2021) and
against transformers' Llama rotary; ALiBi's slopes against the ALiBi paper's reference code
(Press et al., 2022, transcribed below) and against transformers' BLOOM ``build_alibi_tensor``.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from plugformer import RefusedError
from plugformer.core.interfaces.positional import PositionalDims
from plugformer.plugins.positional.alibi import ALiBiConfig
from plugformer.plugins.positional.none import NoPositionalConfig
from plugformer.plugins.positional.rope import RoPEConfig


def build(registry, config, num_heads=4, head_dim=16, max_seq_len=512):
    return registry.build("positional", config, PositionalDims(num_heads, head_dim, max_seq_len))


def random_qk(b=2, hq=4, hkv=2, s=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, hq, s, d, generator=g), torch.randn(b, hkv, s, d, generator=g)


# -- RoPE ----------------------------------------------------------------------------------


def reference_rope(x, positions, theta, rotary_dim, interleaved):
    """RoFormer: rotate feature pair i by angle pos * theta^(-2i/d), d = rotary_dim, in float64.

    Pairs are (i, i + d/2) (Llama/NeoX halves) or (2i, 2i+1) (GPT-J, the paper's layout);
    features beyond ``rotary_dim`` pass through. x: [B, H, S, D], positions: [B, S].
    """
    out = x.double().clone()
    d = rotary_dim
    for b in range(x.shape[0]):
        for s in range(x.shape[2]):
            pos = float(positions[b, s])
            for i in range(d // 2):
                angle = pos * theta ** (-2.0 * i / d)
                c, sn = math.cos(angle), math.sin(angle)
                a, bb = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
                xa, xb = x[b, :, s, a].double(), x[b, :, s, bb].double()
                out[b, :, s, a] = xa * c - xb * sn
                out[b, :, s, bb] = xa * sn + xb * c
    return out


# positions: one row from 0 (prefill), one row offset into the context (cached decode)
POSITIONS = torch.tensor([[0, 1, 2, 3, 4, 5], [17, 18, 19, 20, 21, 200]])


@pytest.mark.parametrize(
    "theta,rotary_dim,interleaved",
    [
        (10000.0, None, False),  # Llama defaults
        (500000.0, None, False),  # Llama 3's theta
        (100.0, None, True),  # small custom theta, GPT-J pairs
        (10000.0, 8, False),  # partial rotary (NeoX: a quarter to a half of the head)
        (10000.0, 4, True),  # partial rotary with GPT-J pairs
        (1000.0, 16, True),  # rotary_dim == head_dim given explicitly
    ],
)
def test_rope_matches_roformer_formula(registry, theta, rotary_dim, interleaved):
    rope = build(registry, RoPEConfig(theta=theta, rotary_dim=rotary_dim, interleaved=interleaved))
    q, k = random_qk(seed=int(theta) % 97)
    state = rope.prepare(POSITIONS)
    q_rot, k_rot = rope.rotate(q, k, state)
    rd = rotary_dim or q.shape[-1]
    # fp32 angles pos * inv_freq at pos <= 200 are off by <= ~200 * 1.2e-7 rad (one rounding of
    # the product, one of inv_freq), so rotated unit-scale features are off by ~3e-5 at most.
    for got, x in ((q_rot, q), (k_rot, k)):
        expected = reference_rope(x, POSITIONS, theta, rd, interleaved)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
        assert torch.equal(got[..., rd:], x[..., rd:])  # the pass-through part is untouched


def test_rope_position_zero_is_identity(registry):
    rope = build(registry, RoPEConfig())
    q, k = random_qk(s=1)
    q_rot, k_rot = rope.rotate(q, k, rope.prepare(torch.zeros(2, 1, dtype=torch.long)))
    # cos 0 = 1 and sin 0 = 0 exactly
    assert torch.equal(q_rot, q) and torch.equal(k_rot, k)


@pytest.mark.parametrize("theta,rotary_dim", [(10000.0, None), (500000.0, None), (10000.0, 8)])
def test_rope_equals_transformers_llama_rotary(registry, theta, rotary_dim):
    head_dim = 16
    rope = build(registry, RoPEConfig(theta=theta, rotary_dim=rotary_dim), head_dim=head_dim)
    q, k = random_qk(d=head_dim, seed=5)
    rd = rotary_dim or head_dim
    # the HF Llama rotary embedding: inv_freq, then cos/sin of cat(freqs, freqs)
    inv_freq = 1.0 / (theta ** (torch.arange(0, rd, 2, dtype=torch.int64).float() / rd))
    freqs = POSITIONS.float().unsqueeze(-1) * inv_freq  # [B, S, rd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, rd]
    q_hf, k_hf = apply_rotary_pos_emb(q[..., :rd], k[..., :rd], emb.cos(), emb.sin())
    # partial rotary as in HF's GPT-NeoX: rotate the first rd features, pass the rest through
    q_hf = torch.cat((q_hf, q[..., rd:]), dim=-1)
    k_hf = torch.cat((k_hf, k[..., rd:]), dim=-1)
    q_rot, k_rot = rope.rotate(q, k, rope.prepare(POSITIONS))
    # the same fp32 formula in a different order of operations: a few ulps of O(1) values
    torch.testing.assert_close(q_rot, q_hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_rot, k_hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "rotary_dim,interleaved", [(None, False), (None, True), (8, False), (6, True)]
)
def test_rope_scores_depend_only_on_relative_position(registry, rotary_dim, interleaved):
    rope = build(registry, RoPEConfig(rotary_dim=rotary_dim, interleaved=interleaved))
    g = torch.Generator().manual_seed(1)
    qv = torch.randn(1, 1, 1, 16, generator=g)
    kv = torch.randn(1, 1, 1, 16, generator=g)

    def score(m: int, n: int) -> float:
        q_rot, _ = rope.rotate(qv, kv, rope.prepare(torch.tensor([[m]])))
        _, k_rot = rope.rotate(qv, kv, rope.prepare(torch.tensor([[n]])))
        return float((q_rot * k_rot).sum())

    for delta in (0, 1, 3, 7):
        scores = torch.tensor([score(n + delta, n) for n in (0, 5, 31, 100)])
        # fp32 angles up to ~100 rad carry ~1e-5 absolute error; the dot of two 16-dim unit-scale
        # vectors (|q.k| ~ 10) then moves by ~1e-4
        torch.testing.assert_close(scores, scores[:1].expand(4), rtol=0, atol=5e-4)
    # and the score does change with the distance (the encoding is not trivial)
    assert abs(score(3, 0) - score(0, 0)) > 1e-2


@pytest.mark.parametrize(
    "config,reason",
    [
        (RoPEConfig(rotary_dim=7), "rotary_dim=7 must be even"),
        (RoPEConfig(rotary_dim=32), "rotary_dim=32 must be even, positive and at most head_dim"),
        (RoPEConfig(rotary_dim=0), "rotary_dim=0 must be even"),
        (RoPEConfig(theta=0.0), "theta=0.0 must be positive"),
        (RoPEConfig(theta=-10000.0), "theta=-10000.0 must be positive"),
        (RoPEConfig(theta=float("nan")), "theta=nan must be positive"),
        (ALiBiConfig(max_bias=0.0), "max_bias=0.0 must be positive"),
    ],
)
def test_positional_refusals(registry, config, reason):
    with pytest.raises(RefusedError, match=reason) as info:
        build(registry, config, head_dim=16)
    assert info.value.kind == "positional"
    assert info.value.name == config.name


# -- ALiBi ---------------------------------------------------------------------------------


def paper_slopes(n: int) -> list[float]:
    """``get_slopes`` from the ALiBi paper's reference code (ofirpress/attention_with_linear_biases,
    fairseq/models/transformer.py), transcribed."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + paper_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def alibi_slopes_of(registry, num_heads: int) -> torch.Tensor:
    """The slopes a built ALiBi applies, read back from its bias: bias(i=1, j=0) = -m_h."""
    alibi = build(registry, ALiBiConfig(), num_heads=num_heads)
    bias = alibi.bias(torch.tensor([[1]]), torch.tensor([[0]]))  # [1, H, 1, 1]
    assert bias.shape == (1, num_heads, 1, 1)
    return -bias.flatten()


def test_alibi_slopes_for_8_heads_are_the_papers(registry):
    # the paper's example: for 8 heads the slopes are 1/2, 1/4, ..., 1/256 (exact in fp32)
    expected = torch.tensor([2.0**-h for h in range(1, 9)])
    assert torch.equal(alibi_slopes_of(registry, 8), expected)


def test_alibi_slopes_for_6_heads_interleave_the_next_power(registry):
    # 4 heads give 1/4, 1/16, 1/64, 1/256; then every other slope of 8 heads: 1/2, 1/8
    expected = torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])
    assert torch.equal(alibi_slopes_of(registry, 6), expected)


HEAD_COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 40, 64, 112]


@pytest.mark.parametrize("num_heads", HEAD_COUNTS)
def test_alibi_slopes_match_paper_reference_code(registry, num_heads):
    expected = torch.tensor(paper_slopes(num_heads), dtype=torch.float64)
    # float64 paper values rounded once to fp32: relative error <= 2^-24 ~ 6e-8
    torch.testing.assert_close(
        alibi_slopes_of(registry, num_heads).double(), expected, rtol=1.2e-7, atol=0
    )


@pytest.mark.parametrize("num_heads", HEAD_COUNTS)
def test_alibi_slopes_match_transformers_bloom(registry, num_heads):
    t = 5
    alibi = build_alibi_tensor(torch.ones(1, t, dtype=torch.long), num_heads, torch.float32)
    # BLOOM returns slopes * key position, [B*H, 1, T]; key position 1 holds the slopes
    hf_slopes = alibi.view(num_heads, t)[:, 1]
    assert torch.equal(alibi.view(num_heads, t), hf_slopes[:, None] * torch.arange(t).float())
    # BLOOM rounds the base to fp32 and raises it to powers h <= 2 * 64, so its slope h carries
    # up to ~h * 2^-24 relative error (<= 7.6e-6); ours are float64 rounded once
    torch.testing.assert_close(alibi_slopes_of(registry, num_heads), hf_slopes, rtol=1e-5, atol=0)


@pytest.mark.parametrize("num_heads", [3, 8])
def test_alibi_bias_values(registry, num_heads):
    alibi = build(registry, ALiBiConfig(), num_heads=num_heads)
    slopes = torch.tensor(paper_slopes(num_heads), dtype=torch.float64)
    # row 0: prefill of 4 tokens over 4 keys; row 1: 4 new tokens at 9..12 after 9 cached keys
    q_pos = torch.tensor([[0, 1, 2, 3], [9, 10, 11, 12]])
    k_pos = torch.stack([torch.arange(13), torch.arange(13)])
    bias = alibi.bias(q_pos, k_pos)
    assert bias.shape == (2, num_heads, 4, 13)
    assert bias.dtype == torch.float32
    distance = (q_pos[:, :, None] - k_pos[:, None, :]).double()  # [B, S, T], i - j
    expected = -slopes.view(1, -1, 1, 1) * distance[:, None]  # -m_h * (i - j)
    # slopes rounded to fp32 once, times an exact small integer: relative error ~ 1e-7
    torch.testing.assert_close(bias.double(), expected, rtol=2.5e-7, atol=0)
    # the diagonal is exactly zero, and ALiBi leaves q and k alone
    assert torch.equal(bias[0, :, torch.arange(4), torch.arange(4)], torch.zeros(num_heads, 4))
    q, k = random_qk(hq=num_heads, hkv=num_heads)
    q2, k2 = alibi.rotate(q, k, alibi.prepare(q_pos))
    assert torch.equal(q2, q) and torch.equal(k2, k)


# -- none ----------------------------------------------------------------------------------


def test_none_is_identity_without_bias(registry):
    pe = build(registry, NoPositionalConfig())
    q, k = random_qk()
    positions = torch.arange(6).expand(2, 6)
    q2, k2 = pe.rotate(q, k, pe.prepare(positions))
    assert torch.equal(q2, q) and torch.equal(k2, k)
    assert pe.bias(positions, positions) is None
