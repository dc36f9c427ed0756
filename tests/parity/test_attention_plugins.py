"""Real values of the built-in attention kernels (``mha``, ``gqa``) against a naive reference.

The reference below repeats every KV head explicitly for its query group and spells out
``softmax(q k^T * scale + bias) v`` with an einsum in float64, so it shares no code with the
plugins (which use SDPA with ``enable_gqa`` or a grouped matmul without copies).
"""

from __future__ import annotations

import math

import pytest
import torch

from plugformer import RefusedError
from plugformer.core.interfaces.attention import AttentionDims
from plugformer.plugins.attention.gqa import GQAConfig
from plugformer.plugins.attention.mha import MHAConfig

IMPLS = ["sdpa", "reference"]

# (batch, query heads, KV heads, query length S, key length T, head dim)
GQA_SHAPES = [
    (2, 4, 4, 5, 5, 8),  # groups 1 (MHA layout), prefill S == T
    (2, 4, 2, 3, 7, 8),  # groups 2, S != T: 3 new tokens after 4 cached ones
    (1, 8, 2, 1, 9, 16),  # groups 4, one-token cached decode
    (2, 4, 1, 4, 6, 8),  # MQA: a single KV head shared by every query head
    (3, 6, 1, 2, 5, 4),  # MQA with 6 heads, odd-ish sizes
]
MHA_SHAPES = [s for s in GQA_SHAPES if s[1] == s[2]] + [
    (2, 3, 3, 3, 8, 8),  # S != T: 3 new tokens after 5 cached ones
    (1, 2, 2, 1, 4, 16),  # one-token cached decode
]
BIASES = ["causal", "alibi", "causal+alibi", "padding"]


def reference_slopes(num_heads: int) -> list[float]:
    """ALiBi-style slopes 2^(-8 h / H); any positive per-head values would do here."""
    return [2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)]


def make_bias(kind: str, b: int, h: int, s: int, t: int) -> torch.Tensor:
    """An additive float bias for queries at positions T-S..T-1 and keys at 0..T-1."""
    offset = t - s  # the new queries sit after ``offset`` cached keys
    i = torch.arange(s).view(s, 1) + offset  # query positions
    j = torch.arange(t).view(1, t)  # key positions
    causal = torch.zeros(s, t).masked_fill(j > i, float("-inf"))  # [S, T]
    slopes = torch.tensor(reference_slopes(h)).view(h, 1, 1)
    alibi = -slopes * (i - j).float()  # [H, S, T], positive above the diagonal (no mask)
    if kind == "causal":
        return causal.view(1, 1, s, t)
    if kind == "alibi":
        return alibi.view(1, h, s, t)
    if kind == "causal+alibi":
        return (causal + alibi).view(1, h, s, t)
    # "padding": causal, and row 0 of the batch cannot see its first key (a padding slot)
    bias = causal.view(1, 1, s, t).repeat(b, 1, 1, 1)  # [B, 1, S, T]
    bias[0, :, :, 0] = float("-inf")
    # a query left with no visible key sees every key instead (as the decoder does)
    hidden = torch.isinf(bias).all(dim=-1, keepdim=True)
    return bias.masked_fill(hidden, 0.0)


def reference_attention(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v with KV heads repeated per query group, in float64."""
    hq, hkv = q.shape[1], k.shape[1]
    groups = hq // hkv
    k = k.double().repeat_interleave(groups, dim=1)  # [B, Hq, T, D]: head h reads KV h // G
    v = v.double().repeat_interleave(groups, dim=1)
    scores = torch.einsum("bhsd,bhtd->bhst", q.double(), k) * scale + bias.double()
    probs = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.einsum("bhst,bhtd->bhsd", probs, v)


def random_qkv(shape, seed):
    b, hq, hkv, s, t, d = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, s, d, generator=g)
    k = torch.randn(b, hkv, t, d, generator=g)
    v = torch.randn(b, hkv, t, d, generator=g)
    return q, k, v


def run_case(registry, name, config, shape, bias_kind, scale, seed):
    b, hq, hkv, s, t, d = shape
    kernel = registry.build("attention", config, AttentionDims(hq, hkv, d, scale))
    q, k, v = random_qkv(shape, seed)
    bias = make_bias(bias_kind, b, hq, s, t)
    out = kernel(q, k, v, bias)
    expected = reference_attention(q, k, v, bias, scale)
    assert out.shape == (b, hq, s, d)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # fp32 kernel vs float64 reference on O(1) inputs: softmax-weighted sums of unit-scale values
    # carry ~1e-7 relative rounding per op; 2e-5 leaves room for T-long reductions, no more.
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias_kind", BIASES)
@pytest.mark.parametrize("shape", GQA_SHAPES, ids=lambda s: "B{}H{}KV{}S{}T{}D{}".format(*s))
def test_gqa_matches_reference(registry, impl, bias_kind, shape):
    scale = 1.0 / math.sqrt(shape[-1])
    run_case(registry, "gqa", GQAConfig(impl=impl), shape, bias_kind, scale, seed=sum(shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias_kind", BIASES)
@pytest.mark.parametrize("shape", MHA_SHAPES, ids=lambda s: "B{}H{}KV{}S{}T{}D{}".format(*s))
def test_mha_matches_reference(registry, impl, bias_kind, shape):
    scale = 1.0 / math.sqrt(shape[-1])
    run_case(registry, "mha", MHAConfig(impl=impl), shape, bias_kind, scale, seed=sum(shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "name,config_cls,shape",
    [("gqa", GQAConfig, (2, 4, 2, 3, 7, 8)), ("mha", MHAConfig, (2, 4, 4, 3, 7, 8))],
)
def test_custom_scale_is_used(registry, impl, name, config_cls, shape):
    # a scale far from 1/sqrt(D) changes the softmax visibly, so ignoring it would fail
    run_case(registry, name, config_cls(impl=impl), shape, "causal+alibi", scale=0.9, seed=7)


@pytest.mark.parametrize("impl", IMPLS)
def test_gqa_with_all_kv_heads_equals_mha(registry, impl):
    shape = (2, 4, 4, 3, 6, 8)
    dims = AttentionDims(4, 4, 8, 1.0 / math.sqrt(8))
    gqa = registry.build("attention", GQAConfig(impl=impl), dims)
    mha = registry.build("attention", MHAConfig(impl=impl), dims)
    q, k, v = random_qkv(shape, seed=3)
    bias = make_bias("causal+alibi", 2, 4, 3, 6)
    # same layout, same fp32 arithmetic up to kernel choice: a few ulps of O(1) outputs
    torch.testing.assert_close(gqa(q, k, v, bias), mha(q, k, v, bias), rtol=1e-5, atol=1e-6)


def test_gqa_groups_read_their_own_kv_head(registry):
    """Query head h must read KV head h // G: make each KV head's values a distinct constant."""
    b, hq, hkv, s, t, d = 1, 4, 2, 2, 3, 4
    dims = AttentionDims(hq, hkv, d, 0.5)
    q, k, _ = random_qkv((b, hq, hkv, s, t, d), seed=11)
    v = torch.arange(hkv, dtype=torch.float32).view(1, hkv, 1, 1).expand(b, hkv, t, d)
    bias = make_bias("causal", b, hq, s, t)
    for impl in IMPLS:
        out = registry.build("attention", GQAConfig(impl=impl), dims)(q, k, v, bias)
        expected = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, hq, 1, 1).expand_as(out)
        # a convex combination of equal values is that value up to one rounding
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kv_heads", [1, 2, 8])
def test_mha_refuses_fewer_or_more_kv_heads(registry, impl, kv_heads):
    with pytest.raises(RefusedError, match="mha needs as many KV heads as heads") as info:
        registry.build("attention", MHAConfig(impl=impl), AttentionDims(4, kv_heads, 8, 0.3))
    assert info.value.kind == "attention"
    assert info.value.name == "mha"


@pytest.mark.parametrize("heads,kv_heads", [(6, 4), (4, 3), (8, 5), (4, 0)])
def test_gqa_refuses_non_dividing_kv_heads(registry, heads, kv_heads):
    with pytest.raises(RefusedError, match="gqa needs num_kv_heads to divide num_heads") as info:
        registry.build("attention", GQAConfig(), AttentionDims(heads, kv_heads, 8, 0.3))
    assert info.value.name == "gqa"


@pytest.mark.parametrize("name,config_cls", [("gqa", GQAConfig), ("mha", MHAConfig)])
def test_unknown_impl_is_refused(registry, name, config_cls):
    with pytest.raises(RefusedError, match=r"attention\.impl='flash' is not one of sdpa") as info:
        registry.build("attention", config_cls(impl="flash"), AttentionDims(4, 4, 8, 0.3))
    assert info.value.name == name
    assert len(info.value.reasons) == 1


def test_every_reason_is_listed(registry):
    # a bad head layout and a bad impl are both reported, not only the first
    with pytest.raises(RefusedError) as info:
        registry.build("attention", GQAConfig(impl="nope"), AttentionDims(6, 4, 8, 0.3))
    assert len(info.value.reasons) == 2
