"""QuantLinear: its forward equals its dequantized reference on every kernel, and the
dequantized weight follows the GPTQ formula written out here by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugformer.core.native import build as native
from plugformer.core.quant.grid import rtn
from plugformer.core.quant.kernels import int4_plan
from plugformer.core.quant.linear import QuantLinear, layout_problems
from plugformer.core.quant.pack import pack


def _random_qlinear(bits, group_size, k=128, n=64, *, bias=True, act_order=False, seed=0,
                    zero_format="gptq"):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size == -1 else k // group_size
    q = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(groups, n, generator=g) * 0.02 + 0.005
    if zero_format == "float":
        zeros = -scales * 7.3 + torch.randn(groups, n, generator=g) * 1e-3
    else:
        zeros = torch.randint(1, 2**bits, (groups, n), generator=g)
    gs = k if group_size == -1 else group_size
    g_idx = torch.arange(k) // gs
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=g)]
    b = torch.randn(n, generator=g) if bias else None
    m = QuantLinear.from_ints(
        q, scales, zeros, g_idx, bits, group_size, b, desc_act=act_order, zero_format=zero_format
    )
    return m, q, scales.half().float(), zeros, g_idx


def _by_hand(q, scales, zeros, g_idx, zero_format="gptq"):
    """W[o, i] = scales[g_idx[i], o] * (q[o, i] - zero[g_idx[i], o]) (float: s * q + offset)."""
    s = scales[g_idx.long()].t()  # [n, k]
    if zero_format == "float":
        return q.float() * s + zeros.half().float()[g_idx.long()].t()
    return s * (q.float() - zeros.float()[g_idx.long()].t())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("act_order", [False, True])
def test_dequantize_follows_the_gptq_formula(bits, group_size, act_order):
    m, q, s, z, g_idx = _random_qlinear(bits, group_size, act_order=act_order)
    assert m.qweight.shape == (128 * bits // 32, 64) and m.qweight.dtype == torch.int32
    assert m.qzeros.shape == (m.groups, 64 * bits // 32) and m.scales.dtype == torch.float16
    assert torch.equal(m.int_weight(), q.t().to(torch.int32))
    assert torch.equal(m.zero_points(), z.to(torch.int32))
    torch.testing.assert_close(m.dequantize(), _by_hand(q, s, z, g_idx), rtol=0, atol=0)


def test_gptq_v1_stores_zero_minus_one_and_v2_the_zero():
    q = torch.randint(0, 16, (8, 32))
    zeros = torch.full((1, 8), 8)
    v1 = QuantLinear.from_ints(q, torch.ones(1, 8), zeros, None, 4, -1)
    v2 = QuantLinear.from_ints(q, torch.ones(1, 8), zeros, None, 4, -1, zero_format="gptq_v2")
    assert v1.qzeros.item() == 0x77777777 and v2.qzeros.item() == -0x77777778  # 0x88888888
    torch.testing.assert_close(v1.dequantize(), v2.dequantize(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="zero points out of range"):
        QuantLinear.from_ints(q, torch.ones(1, 8), torch.zeros(1, 8), None, 4, -1)  # v1: 0 - 1


CASES = [  # bits, group_size, act_order, zero_format
    (4, 32, False, "gptq"),
    (4, 64, True, "gptq"),
    (4, -1, False, "gptq"),
    (4, 32, False, "float"),
    (8, -1, False, "gptq"),
    (8, 32, False, "gptq"),
    (3, 32, True, "gptq"),
    (2, 64, False, "gptq"),
]


@pytest.mark.parametrize("bits,group_size,act_order,zero_format", CASES)
@pytest.mark.parametrize("shape", [(3,), (2, 5)])
def test_forward_equals_dequantized_reference_in_float32(
    bits, group_size, act_order, zero_format, shape
):
    m, *_ = _random_qlinear(bits, group_size, act_order=act_order, zero_format=zero_format)
    x = torch.randn(*shape, 128)
    ref = F.linear(x, m.dequantize(), m.bias)
    # float32 dequantizes once and runs F.linear: the same arithmetic as the reference
    torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
    m.set_backend("reference")
    torch.testing.assert_close(m(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("bits,group_size,act_order,zero_format", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 7])
def test_packed_cpu_kernels_equal_the_reference(bits, group_size, act_order, zero_format, dtype,
                                                tokens):  # fmt: skip
    m, *_ = _random_qlinear(bits, group_size, act_order=act_order, zero_format=zero_format)
    x = torch.randn(tokens, 128).to(dtype)
    ref = F.linear(x.float(), m.dequantize(), m.bias)
    kernel = (
        "torch_int4" if int4_plan(m) else "torch_int8" if bits == 8 and group_size == -1 else None
    )
    m.set_backend(kernel or "dequant")  # the native kernel has its own tests (test_native.py)
    out = m(x)
    assert out.dtype == dtype
    # the int4/int8 ops take scales and activations in bf16/fp16 and round their output to it:
    # relative error of a few 2^-8 (bf16) or 2^-11 (fp16) of the output's magnitude
    eps = 2**-7 if dtype == torch.bfloat16 else 2**-9
    torch.testing.assert_close(out.float(), ref, rtol=eps, atol=eps * ref.abs().max().item())


def test_auto_picks_the_packed_kernels_and_float32_stays_exact():
    m4, *_ = _random_qlinear(4, 32)
    m8, *_ = _random_qlinear(8, -1)
    m3, *_ = _random_qlinear(3, 32)
    cpu = torch.device("cpu")
    fast4, fast8 = ("native", "native") if native.available() else ("torch_int4", "torch_int8")
    assert m4.kernel_for(cpu, torch.bfloat16)[0] == fast4
    assert m4.kernel_for(cpu, torch.float16)[0] == fast4
    assert m8.kernel_for(cpu, torch.bfloat16)[0] == fast8
    assert m3.kernel_for(cpu, torch.bfloat16)[0] == "dequant"
    assert m4.kernel_for(cpu, torch.float32)[0] == "dequant"  # exact: F.linear on float32


def test_kernels_are_rebuilt_after_new_weights():
    m, *_ = _random_qlinear(4, 32, bias=False)
    x = torch.randn(1, 128)
    before = m(x)
    m.scales = m.scales * 2
    torch.testing.assert_close(m(x), before * 2)


def test_rtn_round_trips_through_the_layout():
    lin = torch.nn.Linear(128, 64)
    for bits, gs, sym in [(4, 32, True), (4, -1, False), (8, -1, True), (3, 64, False)]:
        m = rtn(lin, bits, gs, sym)
        err = (m.dequantize() - lin.weight).abs()
        step = m.scales.float().max()
        # half a step of rounding, plus the fp16 rounding of the scale times up to 2**(bits-1)
        assert err.max() <= step * 0.6
        assert err.mean() < step / 3


def test_layout_problems_name_the_sizes():
    assert layout_problems(576, 576, 4, 64) == []
    assert layout_problems(576, 576, 4, 128) == ["group_size=128 does not divide in_features=576"]
    assert layout_problems(64, 40, 3, -1) == [
        "out_features=40 is not a multiple of 32 (3-bit packing)"
    ]
    assert layout_problems(64, 64, 5, -1) == ["bits=5 is not supported (supported: 2, 3, 4, 8)"]
    with pytest.raises(ValueError, match="does not divide"):
        QuantLinear(100, 64, 4, 32)


def test_g_idx_out_of_range_is_reported():
    m, *_ = _random_qlinear(4, 32)
    assert m.check_g_idx() == []
    m.g_idx[5] = 4
    assert m.check_g_idx() == ["g_idx holds 4, outside the 4 groups [0, 4)"]


def test_pack_shapes_of_a_hand_built_layer():
    q = torch.randint(0, 16, (16, 64))
    m = QuantLinear.from_ints(q, torch.ones(2, 16), torch.full((2, 16), 8), None, 4, 32)
    assert torch.equal(m.qweight, pack(q.t(), 4, 0))
    assert torch.equal(m.g_idx, torch.arange(64, dtype=torch.int32) // 32)


@pytest.mark.parametrize("bits,rows", [(8, 16), (4, 24), (8, 4096)])
def test_rtn_by_rows_equals_rtn(bits, rows):
    from plugformer.core.quant.grid import rtn, rtn_by_rows

    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(64, 104, bias=True)  # a last chunk shorter than the others
    with torch.no_grad():
        lin.weight.normal_(generator=g)
        lin.bias.normal_(generator=g)
    whole, by_rows = rtn(lin, bits, -1, sym=True), rtn_by_rows(lin, bits, sym=True, rows=rows)
    for name in ("qweight", "qzeros", "scales", "g_idx", "bias"):
        assert torch.equal(getattr(whole, name), getattr(by_rows, name)), name


def test_int8_weights_read_from_the_packed_bytes():
    from plugformer.core.quant.grid import rtn
    from plugformer.core.quant.kernels import int8_weights

    lin = torch.nn.Linear(64, 48)
    m = rtn(lin, 8, -1, sym=False)
    want = (m.int_weight().t() - 128).to(torch.int8)
    assert torch.equal(int8_weights(m), want)
