"""fuse_projections=true: q/k/v and gate/up joined into one layer each, dense or quantized,
compute what the separate layers compute."""

from __future__ import annotations

import pytest
import torch

import plugformer
from plugformer.core.model.fuse import concat_linears
from plugformer.core.quant.grid import rtn
from plugformer.core.quant.linear import QuantLinear

IDS = torch.tensor([[1, 5, 9, 77, 3, 200, 14, 8], [2, 2, 40, 41, 42, 43, 44, 45]])


def _pair(overrides):
    plain = plugformer.Engine.from_overrides(overrides)
    fused = plugformer.Engine.from_overrides([*overrides, "fuse_projections=true"])
    return plain, fused


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=tiny"],
        ["model=tiny", "model.spec.attention_bias=true", "model.spec.mlp_bias=true"],
        ["model=tiny", "quant=rtn", "quant.bits=4", "quant.group_size=32"],
        ["model=tiny", "quant=rtn", "quant.bits=8", "model.dtype=bfloat16"],
    ],
    ids=["dense", "biases", "rtn4", "rtn8-bf16"],
)
def test_fused_model_equals_the_separate_layers(overrides):
    plain, fused = _pair(overrides)
    names = {n.rsplit(".", 1)[-1] for n, _ in fused.model.named_modules()}
    assert {"wqkv", "gate_up"} <= names and not {"wq", "wk", "wv", "gate", "up"} & names
    # one GEMM over the joined output features: each output is the same dot product, at most
    # a different blocking of the reduction (a few float32 ulp); bf16 runs are exact to bf16
    tol = 1e-5 if plain.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fused.logits(IDS), plain.logits(IDS), atol=tol, rtol=tol)
    prompt = IDS[0].tolist()
    a = plain.generate(prompt, 12, ignore_eos=True).token_ids
    assert fused.generate(prompt, 12, ignore_eos=True).token_ids == a


def test_quantized_parts_join_exactly():
    g = torch.Generator().manual_seed(0)
    layers = []
    for out in (64, 32, 32):
        lin = torch.nn.Linear(64, out, bias=True)
        with torch.no_grad():
            lin.weight.normal_(generator=g)
            lin.bias.normal_(generator=g)
        layers.append(rtn(lin, 4, 32, sym=False))
    fused = concat_linears(layers)
    assert isinstance(fused, QuantLinear) and fused.out_features == 128
    full = torch.cat([m.dequantize() for m in layers])
    assert torch.equal(fused.dequantize(), full)
    x = torch.randn(3, 64, generator=g)
    torch.testing.assert_close(fused(x), torch.cat([m(x) for m in layers], dim=-1))


def test_layers_that_cannot_join_stay_apart():
    a, b = torch.nn.Linear(64, 32), torch.nn.Linear(48, 32)
    assert concat_linears([a, b]) is None  # other input sizes
    q = rtn(torch.nn.Linear(64, 32), 4, 32, sym=True)
    assert concat_linears([q, torch.nn.Linear(64, 32)]) is None  # dense and quantized
    perm = torch.randperm(64)
    shuffled = QuantLinear.from_ints(
        q.int_weight().t()[:, perm], q.scales, q.zero_points(), q.g_idx[perm], 4, 32,
        desc_act=True,
    )  # fmt: skip
    assert concat_linears([q, shuffled]) is None  # act-order: each its own g_idx


def test_quantize_refuses_fusion():
    with pytest.raises(plugformer.ConfigError, match="fuse_projections"):
        from plugformer.core.commands.quantize import quantize_command

        quantize_command(["quant=rtn", "fuse_projections=true", "output_dir=/nonexistent"])
