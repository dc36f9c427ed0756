"""The generic decoder on the ``tiny`` flavor: cached decoding equals the full pass, the attention
implementations agree, and the logits equal an independent naive re-implementation (float64
loops over the state dict) -- the real-value check of the whole model."""

from __future__ import annotations

import math

import pytest
import torch

import plugformer
from plugformer import ValidationError
from plugformer.core.model.decoder import Decoder
from plugformer.core.model.kv_cache import KVCache

VOCAB = 258  # the tiny flavor's byte tokenizer: 256 bytes + BOS + EOS
MHA = ["attention=mha", "model.spec.num_kv_heads=4"]  # the tiny model has 4 heads, 2 KV heads

CONFIGS = {
    "gqa-rope": [],
    "gqa-alibi": ["positional=alibi"],
    "gqa-none": ["positional=none"],
    "mha-rope": MHA,
    "mha-alibi": [*MHA, "positional=alibi"],
    "mha-none": [*MHA, "positional=none"],
    "gqa-rope-parallel": ["model.spec.parallel_block=true"],
    "mha-alibi-parallel": [*MHA, "positional=alibi", "model.spec.parallel_block=true"],
    "mqa-rope-partial": ["model.spec.num_kv_heads=1", "positional.rotary_dim=8"],
    "gqa-rope-reference": ["attention.impl=reference"],
    "mha-alibi-reference": [*MHA, "positional=alibi", "attention.impl=reference"],
}


KERNELS = {"gqa": "GQA", "mha": "MHA"}
POSITIONALS = {"rope": "RoPE", "alibi": "ALiBi", "none": "NoPositional"}


def choice(overrides: list[str], group: str, default: str) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{group}=")), default)


def make_engine(overrides: list[str], sharpen: float = 8.0) -> plugformer.Engine:
    """A tiny engine whose q/k projections are scaled up ``sharpen`` times.

    The model, attention and positional options are always named explicitly (``model=tiny``,
    ``attention=gqa``, ``positional=rope`` unless ``overrides`` choose others), so the tests do
    not depend on the config's defaults.

    With the tiny flavor's N(0, 0.02) weights, attention scores are ~0.02 and the softmax is
    nearly uniform, which would hide positional or masking mistakes. Scaled up, scores are O(1).
    """
    attention = choice(overrides, "attention", "gqa")
    positional = choice(overrides, "positional", "rope")
    explicit = [f"model={choice(overrides, 'model', 'tiny')}"]
    explicit += [f"attention={attention}", f"positional={positional}"]
    rest = [o for o in overrides if not o.startswith(("model=", "attention=", "positional="))]
    engine = plugformer.Engine.from_overrides(explicit + rest)
    assert type(engine.model.layers[0].attn.kernel).__name__ == KERNELS[attention]
    assert type(engine.model.positional).__name__ == POSITIONALS[positional]
    with torch.no_grad():
        for block in engine.model.layers:
            block.attn.wq.weight.mul_(sharpen)
            block.attn.wk.weight.mul_(sharpen)
    return engine


def random_ids(b: int, s: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def cached_logits(model: Decoder, ids: torch.Tensor, chunks: list[int], slack: int = 5):
    """Logits [B, S, V] of ``ids`` fed through a KV cache in chunks of the given lengths."""
    b, s = ids.shape
    assert sum(chunks) == s
    # a cache longer than needed: its empty slots must stay invisible
    cache = KVCache(b, s + slack)
    out, start = [], 0
    for n in chunks:
        positions = torch.arange(start, start + n).expand(b, n)  # [B, n]
        out.append(model(ids[:, start : start + n], positions, cache))
        start += n
    return torch.cat(out, dim=1)


# Both paths run the same fp32 weights over the same tokens; they differ only in how attention
# reduces (masked cache slots, SDPA's kernel choice for S=1 vs S>1): a few ulps per op through
# 2 layers, measured <= 3e-7 on logits ~0.6. 5e-6 (~80 ulps of 0.5) leaves room for other CPUs
# and is far below a real bug (a wrong position or mask moves logits by >1e-2 here).
CACHE_TOL = {"rtol": 1e-5, "atol": 5e-6}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_prefill_then_cached_decode_equals_full_pass(overrides):
    engine = make_engine(overrides)
    ids = random_ids(2, 12, seed=1)
    full = engine.logits(ids)  # [B, S, V], no cache
    # prefill 5 tokens, then decode the other 7 one at a time
    cached = cached_logits(engine.model, ids, [5] + [1] * 7)
    torch.testing.assert_close(cached, full, **CACHE_TOL)
    # chunked prefill: two chunks through the cache
    torch.testing.assert_close(cached_logits(engine.model, ids, [7, 5]), full, **CACHE_TOL)


def test_positional_encoding_matters():
    # guards the test above against a model where positions have no effect at all
    engine = make_engine([])
    ids = random_ids(1, 8, seed=2)
    flipped = torch.cat([ids[:, :6].flip(1), ids[:, 6:]], dim=1)  # same bag, new order
    assert (engine.logits(ids)[0, -1] - engine.logits(flipped)[0, -1]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "base",
    [[], ["positional=alibi"], [*MHA, "model.spec.parallel_block=true"]],
    ids=["gqa-rope", "gqa-alibi", "mha-parallel"],
)
def test_reference_impl_equals_sdpa(base):
    ids = random_ids(2, 10, seed=3)
    sdpa = make_engine([*base, "attention.impl=sdpa"]).logits(ids)
    ref = make_engine([*base, "attention.impl=reference"]).logits(ids)
    # same weights (same model.seed); two fp32 attention kernels: a few ulps of logits ~0.5
    torch.testing.assert_close(ref, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_gqa_with_all_kv_heads_equals_mha(impl):
    ids = random_ids(2, 10, seed=4)
    gqa = make_engine(["model.spec.num_kv_heads=4", f"attention.impl={impl}"])
    mha = make_engine([*MHA, f"attention.impl={impl}"])
    # same seed and the same module tree, hence the same weights
    gqa_weights, mha_weights = gqa.model.state_dict(), mha.model.state_dict()
    assert list(gqa_weights) == list(mha_weights)
    for name, weight in gqa_weights.items():
        assert torch.equal(weight, mha_weights[name]), name
    # with one query head per KV head, gqa is mha: equal up to kernel rounding (a few ulps)
    torch.testing.assert_close(gqa.logits(ids), mha.logits(ids), rtol=1e-6, atol=1e-6)


# -- the naive re-implementation -----------------------------------------------------------


def naive_logits(engine: plugformer.Engine, ids: torch.Tensor, positional: str) -> torch.Tensor:
    """Logits [B, S, V] of the Llama-style decoder, from the state dict, in float64 loops.

    RMSNorm, per-pair RoPE rotation (halves (i, i + D/2), angle pos * 10000^(-2i/D)) or ALiBi
    (paper slopes) or nothing, causal softmax attention with KV head h // G for query head h,
    and SwiGLU, all written out here without calling plugformer code.
    """
    spec = engine.spec
    w = {k: v.double() for k, v in engine.model.state_dict().items()}
    n_heads, n_kv, d = spec.num_heads, spec.kv_heads, spec.hidden_size // spec.num_heads
    group = n_heads // n_kv
    scale = 1.0 / math.sqrt(d)
    slopes = [2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)]  # 4 heads: a power of 2
    b, s = ids.shape

    def rmsnorm(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + spec.norm_eps) * weight

    def rope(x):  # x: [S, D] for one head; position of row i is i
        out = x.clone()
        for pos in range(x.shape[0]):
            for i in range(d // 2):
                angle = pos * 10000.0 ** (-2.0 * i / d)
                c, sn = math.cos(angle), math.sin(angle)
                a, bb = x[pos, i], x[pos, i + d // 2]
                out[pos, i], out[pos, i + d // 2] = a * c - bb * sn, a * sn + bb * c
        return out

    def silu(x):
        return x / (1.0 + torch.exp(-x))

    x = w["embed.weight"][ids]  # [B, S, hidden]
    for layer in range(spec.num_layers):
        p = f"layers.{layer}."
        h = rmsnorm(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn.wq.weight"].T).view(b, s, n_heads, d)
        k = (h @ w[p + "attn.wk.weight"].T).view(b, s, n_kv, d)
        v = (h @ w[p + "attn.wv.weight"].T).view(b, s, n_kv, d)
        attn = torch.zeros(b, s, n_heads, d, dtype=torch.float64)
        for row in range(b):
            keys = [k[row, :, j] for j in range(n_kv)]
            if positional == "rope":
                keys = [rope(kk) for kk in keys]
            for head in range(n_heads):
                qh = rope(q[row, :, head]) if positional == "rope" else q[row, :, head]
                kh, vh = keys[head // group], v[row, :, head // group]
                for i in range(s):
                    scores = torch.stack([qh[i] @ kh[j] * scale for j in range(i + 1)])
                    if positional == "alibi":
                        scores = scores - slopes[head] * torch.arange(i, -1, -1.0).double()
                    probs = torch.exp(scores - scores.max())
                    probs = probs / probs.sum()
                    attn[row, i, head] = (probs[:, None] * vh[: i + 1]).sum(0)
        attn_out = attn.reshape(b, s, -1) @ w[p + "attn.wo.weight"].T

        def mlp(y, p=p):
            gate, up = y @ w[p + "mlp.gate.weight"].T, y @ w[p + "mlp.up.weight"].T
            return (silu(gate) * up) @ w[p + "mlp.down.weight"].T

        if spec.parallel_block:
            x = x + attn_out + mlp(h)
        else:
            x = x + attn_out
            x = x + mlp(rmsnorm(x, w[p + "mlp_norm.weight"]))
    return rmsnorm(x, w["norm.weight"]) @ w["head.weight"].T


@pytest.mark.parametrize(
    "overrides,positional",
    [
        ([], "rope"),  # the tiny flavor as shipped: GQA (4 heads, 2 KV heads), RoPE, SwiGLU
        (["positional=alibi", "model.spec.parallel_block=true"], "alibi"),
        ([*MHA, "positional=none", "attention.impl=reference"], "none"),
    ],
    ids=["gqa-rope", "gqa-alibi-parallel", "mha-none-reference"],
)
def test_decoder_equals_naive_reimplementation(overrides, positional):
    engine = make_engine(overrides)
    assert engine.spec.norm == "rmsnorm" and engine.spec.mlp == "gated"
    assert engine.spec.activation == "silu" and not engine.spec.tie_embeddings
    ids = random_ids(2, 9, seed=5)
    ours = engine.logits(ids).double()
    expected = naive_logits(engine, ids, positional)
    assert expected.abs().max() > 0.1  # logits of a meaningful size (they are ~0.5 here)
    # fp32 model vs float64 loops: ~6e-8 relative per op through 2 layers on logits ~0.6,
    # measured <= 3e-7; 1e-5 leaves 30x room, while a wrong rotation layout, theta or mask
    # moves these logits by 0.1-0.3
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


# -- the engine around the decoder ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,sampling",
    [([], {}), (["sampler=top_p", "positional=alibi"], {"temperature": 0.0})],
    ids=["sampler=greedy", "top_p-temperature0"],
)
def test_greedy_generate_equals_argmax_of_full_forward(overrides, sampling):
    engine = make_engine(overrides)
    prompt = "The plug"
    gen = engine.generate(prompt, max_new_tokens=10, ignore_eos=True, **sampling)
    ids = list(gen.prompt_token_ids)  # what the engine fed the model
    if not getattr(engine.tokenizer, "chat_template", None):
        assert ids == engine.tokenizer.encode(prompt)  # the byte tokenizer: BOS + UTF-8 bytes
    assert len(gen.token_ids) == 10
    for token in gen.token_ids:
        logits = engine.logits(ids)[0, -1]  # full pass over the growing sequence, no cache
        top2 = logits.topk(2).values
        # the cached path differs from this one by ~1e-6 (see CACHE_TOL); a wider top-2 gap
        # makes the argmax unambiguous
        assert top2[0] - top2[1] > 1e-4
        assert token == int(logits.argmax())
        ids.append(token)


def test_generate_rejects_unknown_sampling_parameter():
    engine = make_engine([])
    with pytest.raises(ValidationError, match="unknown sampling parameter"):
        engine.generate("hi", max_new_tokens=2, top_q=0.5)


@pytest.mark.parametrize(
    "token_ids,message",
    [
        ([[1, 2, VOCAB]], "outside the vocabulary"),
        ([[-1, 2]], "outside the vocabulary"),
        ([5, 100000], "outside the vocabulary"),
        ([], "expected integer ids"),
        (torch.empty(1, 0, dtype=torch.long), "expected integer ids"),
        (torch.empty(2, 0, dtype=torch.long), "expected integer ids"),
        (torch.tensor([[1.0, 2.0]]), "expected integer ids"),
        (torch.zeros(1, 257, dtype=torch.long), "exceed the context of 256"),
    ],
    ids=["id=vocab", "id=-1", "huge-id", "empty-list", "empty-1x0", "empty-2x0", "float", "long"],
)
def test_logits_rejects_bad_token_ids(token_ids, message):
    engine = make_engine([])
    with pytest.raises(ValidationError, match=message):
        engine.logits(token_ids)


def test_logits_shape_and_dtype():
    engine = make_engine([])
    assert engine.logits([1, 2, 3]).shape == (1, 3, VOCAB)
    out = engine.logits(random_ids(3, 4))
    assert out.shape == (3, 4, VOCAB) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "bad", [[[1, 2], [3]], "abc", None, torch.tensor([[True, False]]), torch.tensor([[1 + 2j]])]
)
def test_logits_rejects_malformed_token_ids(bad):
    import plugformer

    engine = plugformer.Engine.from_overrides(["model=tiny"])
    with pytest.raises(plugformer.ValidationError, match="token_ids"):
        engine.logits(bad)
