"""The decoder's registry-made parts: MLP plugins (``gated``, ``plain``, ``moe``), norm plugins
(``rmsnorm``, ``layernorm``), the sliding-window attention option, and a part registered by a
user's own plugin. Numbers are checked against transformers' modules and through the KV cache.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import plugformer
from plugformer.core import loader
from plugformer.core.interfaces.attention import AttentionDims
from plugformer.core.interfaces.mlp import MLPDims
from plugformer.core.interfaces.norm import NormConfig, NormDims
from plugformer.core.interfaces.positional import PositionalDims
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.build import build_parts
from plugformer.core.model.decoder import Decoder, default_scale
from plugformer.core.model.kv_cache import KVCache

transformers = pytest.importorskip("transformers")

TINY = "model=tiny"


def test_the_parts_are_registered(registry):
    assert {"gated", "plain", "moe"} <= set(registry.names("mlp"))
    assert {"rmsnorm", "layernorm"} <= set(registry.names("norm"))


# -- MoE against transformers' Mixtral block ----------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_equals_mixtral_block(registry, top_k):
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hidden, inter, experts = 32, 48, 6
    config = transformers.MixtralConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
    )
    torch.manual_seed(top_k)
    hf = MixtralSparseMoeBlock(config).eval()
    for p in hf.parameters():
        nn.init.normal_(p, std=0.2)
    entry = registry.get("mlp", "moe")
    ours = registry.build(
        "mlp",
        entry.config(num_experts=experts, top_k=top_k),
        MLPDims(hidden, inter, "silu", False),
    )
    with torch.no_grad():
        ours.router.weight.copy_(hf.gate.weight)
        for e, expert in enumerate(ours.experts):
            expert.gate.weight.copy_(hf.experts.gate_up_proj[e, :inter])
            expert.up.weight.copy_(hf.experts.gate_up_proj[e, inter:])
            expert.down.weight.copy_(hf.experts.down_proj[e])
    x = torch.randn(3, 7, hidden, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(x)
        got = ours(x)
        chosen = torch.topk(ours.router(x.reshape(-1, hidden)), top_k).indices
    assert len(chosen.unique()) > top_k  # tokens really go to different experts
    # fp32: the same products, summed over experts in the same order
    torch.testing.assert_close(got, expected)


def test_moe_refuses_impossible_routing(registry):
    entry = registry.get("mlp", "moe")
    with pytest.raises(plugformer.RefusedError, match=r"mlp\.top_k=5 must be an integer in"):
        registry.build("mlp", entry.config(num_experts=4, top_k=5), MLPDims(8, 8, "silu", False))
    with pytest.raises(plugformer.RefusedError, match=r"mlp\.num_experts=0 must be a positive"):
        registry.build("mlp", entry.config(num_experts=0), MLPDims(8, 8, "silu", False))


# -- norms against torch and transformers -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_orders_equal_llama_and_gemma(registry, dtype):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = (torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    weight = torch.randn(32, generator=torch.Generator().manual_seed(2)).to(dtype)
    dims = NormDims(32, 1e-6)
    pairs = [(False, LlamaRMSNorm(32, eps=1e-6)), (True, GemmaRMSNorm(32, eps=1e-6))]
    for unit_offset, hf in pairs:
        ours = registry.build(
            "norm", registry.get("norm", "rmsnorm").config(unit_offset=unit_offset), dims
        )
        with torch.no_grad():
            hf.weight.copy_(weight)
            ours.weight.copy_(weight)
        hf, ours = hf.to(dtype), ours.to(dtype)
        with torch.no_grad():
            assert torch.equal(ours(x), hf(x)), f"unit_offset={unit_offset}"


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_equals_torch(registry, bias):
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    ours = registry.build(
        "norm", registry.get("norm", "layernorm").config(bias=bias), NormDims(16, 1e-5)
    )
    ref = nn.LayerNorm(16, eps=1e-5, bias=bias)
    with torch.no_grad():
        for p in [*ours.parameters(), *ref.parameters()]:
            p.copy_(torch.linspace(0.5, 1.5, 16))
        assert torch.equal(ours(x), ref(x))
    assert (ours.bias is not None) == bias


# -- the parts in a whole model, through the KV cache -------------------------------------------


@torch.inference_mode()
def cached_logits(model: Decoder, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    b, s = ids.shape
    cache = KVCache(b, s + 3)
    out, start = [], 0
    for n in chunks:
        positions = torch.arange(start, start + n).expand(b, n)
        out.append(model(ids[:, start : start + n], positions, cache))
        start += n
    return torch.cat(out, dim=1)


def sharpened(overrides: list[str]) -> plugformer.Engine:
    """A tiny engine with q/k scaled up, so attention is far from uniform (see test_decoder)."""
    engine = plugformer.Engine.from_overrides([TINY, *overrides])
    with torch.no_grad():
        for block in engine.model.layers:
            block.attn.wq.weight.mul_(8.0)
            block.attn.wk.weight.mul_(8.0)
    return engine


IDS = torch.randint(0, 258, (2, 14), generator=torch.Generator().manual_seed(4))
VARIANTS = {
    "moe": ["model.spec.mlp=moe", "+model.spec.mlp_args.num_experts=4"],
    "plain-layernorm-gelu": [
        "model.spec.mlp=plain",
        "model.spec.activation=gelu",
        "model.spec.norm=layernorm",
    ],
    "learned-positions-embedding-norm": [
        "positional=learned",  # contract 2.0 (was model.spec.learned_positions=true)
        "model.spec.embedding_norm=true",
        "model.spec.embedding_scale=8.0",
    ],
    "parallel-two-norms": ["model.spec.parallel_block=true", "model.spec.parallel_mlp_norm=true"],
    "window-4": ["attention=gqa", "attention.sliding_window=4"],
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_variants_give_the_same_logits_through_the_cache(overrides):
    engine = sharpened(overrides)
    full = engine.logits(IDS)
    # fp32: the same computation, chunked; tolerance as test_decoder's CACHE_TOL
    for chunks in ([6] + [1] * 8, [9, 5]):
        torch.testing.assert_close(
            cached_logits(engine.model, IDS, chunks), full, rtol=1e-5, atol=5e-6
        )


def test_sliding_window_masks_exactly_the_old_keys():
    engine = sharpened(["attention=gqa", "attention.sliding_window=3"])
    positions = torch.arange(6).unsqueeze(0)
    ctx = engine.model.context(positions, None, None, torch.float32)
    visible = torch.isfinite(ctx.bias[0, 0])  # [S, T]
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(visible, (j <= i) & (i - j < 3))
    # the window changes the model; a window as long as the sequence does not
    plain = sharpened(["attention=gqa"])
    assert (engine.logits(IDS) - plain.logits(IDS)).abs().max() > 1e-2
    wide = sharpened(["attention=gqa", "attention.sliding_window=14"])
    assert torch.equal(wide.logits(IDS), plain.logits(IDS))


def test_unknown_or_wrong_parts_name_the_key():
    with pytest.raises(plugformer.UnknownNameError, match=r"unknown model\.spec\.mlp 'moee'"):
        plugformer.Engine.from_overrides([TINY, "model.spec.mlp=moee"])
    with pytest.raises(
        plugformer.ConfigError, match=r"model\.spec\.mlp_args: mlp 'gated' has no field\(s\) k"
    ):
        plugformer.Engine.from_overrides([TINY, "+model.spec.mlp_args.k=2"])
    moe = ["model.spec.mlp=moe", "+model.spec.mlp_args.num_experts=2"]
    with pytest.raises(plugformer.RefusedError, match=r"mlp\.top_k=3 must be an integer"):
        plugformer.Engine.from_overrides([TINY, *moe, "+model.spec.mlp_args.top_k=3"])
    with pytest.raises(plugformer.ConfigError, match=r"model\.spec\.parallel_mlp_norm: true"):
        plugformer.Engine.from_overrides([TINY, "model.spec.parallel_mlp_norm=true"])
    with pytest.raises(plugformer.RefusedError, match=r"attention\.sliding_window=0 must be"):
        plugformer.Engine.from_overrides([TINY, "attention=gqa", "attention.sliding_window=0"])


def test_decoder_gets_its_parts_from_the_registry(registry):
    # contract 2.0: no process-wide fallback; the builder resolves the parts and hands them in
    spec = ModelSpec(
        vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=12,
        norm="layernorm", mlp="plain", activation="gelu",
    )  # fmt: skip
    kernel = registry.build(
        "attention", registry.get("attention", "gqa").config(), AttentionDims(2, 2, 4, 0.5)
    )
    positional = registry.build(
        "positional", registry.get("positional", "rope").config(), PositionalDims(2, 4, 64)
    )
    model = Decoder(spec, kernel, positional, build_parts(registry, spec))  # the engine's call
    assert type(model.layers[0].mlp).__name__ == "PlainMLP"
    assert type(model.norm).__name__ == "LayerNorm" and model.norm.bias is not None
    assert default_scale(spec) == 0.5


# -- a norm from a user's own plugin ------------------------------------------------------------


@dataclass
class ScaleNormConfig(NormConfig):
    name: str = "scalenorm"


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen and Salazar, 2019, arXiv:1910.05895): ``g * x / ||x||``."""

    def __init__(self, config: ScaleNormConfig, dims: NormDims) -> None:
        super().__init__()
        self.dims = dims
        self.weight = nn.Parameter(torch.tensor(float(dims.dim) ** 0.5))

    def check(self) -> list[str]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x / x.norm(dim=-1, keepdim=True).clamp(min=self.dims.eps)


@pytest.fixture
def scalenorm_plugin():
    loader.reset()
    module = types.ModuleType("my_scalenorm")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("norm", "scalenorm", ScaleNorm, ScaleNormConfig)

    module.plugformer_register = plugformer_register
    plugformer.register(module)
    yield module
    loader.reset()


def test_a_user_norm_plugin_builds_the_model(scalenorm_plugin):
    engine = plugformer.Engine.from_overrides([TINY, "model.spec.norm=scalenorm"])
    norms = [m for m in engine.model.modules() if isinstance(m, ScaleNorm)]
    assert len(norms) == 2 * engine.spec.num_layers + 1  # two per block and the final one
    logits = engine.logits(IDS)
    assert logits.shape == (2, 14, 258) and torch.isfinite(logits).all()
