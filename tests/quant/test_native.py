"""The native CPU kernel (core/native/qmatmul.c through core/native/build.py and
core/quant/kernels.py).

Its arithmetic is spelled out in torch here (:func:`_simulate`): activations rounded to int8 per
block of 32 features, weights centred on the middle of their integer range, the offset term on
the exact float sum. The SIMD build and the portable C build must both equal that simulation to
float32 rounding, and the simulation's distance to the exact dequantized matmul must stay
within the bound the rounding allows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer.core import memory
from plugformer.core.errors import ConfigError
from plugformer.core.native import build as native
from plugformer.core.quant import kernels as qkernels
from plugformer.core.quant.kernels import native_plan
from plugformer.core.quant.linear import QuantLinear

needs_simd = pytest.mark.skipif(
    not native.available(), reason=f"native kernel: {native.unavailable_reason()}"
)
try:
    native.load(portable=True)
    portable_error = None
except native.NativeKernelError as exc:  # no C compiler on this machine
    portable_error = str(exc)
needs_compiler = pytest.mark.skipif(portable_error is not None, reason=str(portable_error))

BACKENDS = [
    pytest.param("native", marks=needs_simd),
    pytest.param("native_portable", marks=needs_compiler),
]


def _layer(bits, group_size, n=48, k=128, *, zero_format="gptq_v2", act_order=False,
           bias=True, seed=0):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size == -1 else k // group_size
    q = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(groups, n, generator=g) * 0.02 + 0.005
    if zero_format == "float":
        zeros = torch.randn(groups, n, generator=g) * 0.05  # GGUF Q4_1-like minimums
    else:
        zeros = torch.randint(1, 2**bits - 1, (groups, n), generator=g)
    gs = k if group_size == -1 else group_size
    g_idx = torch.arange(k) // gs
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=g)]
    b = torch.randn(n, generator=g) if bias else None
    return QuantLinear.from_ints(
        q, scales, zeros, g_idx, bits, group_size, b, desc_act=act_order, zero_format=zero_format
    )


def _per_block(m: QuantLinear, x: torch.Tensor, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as float64 [rows, in], ``fn`` of x's 32-feature blocks in the kernel's feature order
    (act-order permutes it) [rows, blocks, 32], brought back to the layer's order [rows, in])."""
    x = x.double().reshape(-1, m.in_features)
    plan = native_plan(m)
    assert plan is not None
    perm, _ = plan
    xp = x if perm is None else x[:, perm]
    out = fn(xp.view(x.shape[0], -1, 32)).reshape(x.shape[0], -1)
    if perm is not None:
        back = torch.empty_like(out)
        back[:, perm] = out
        out = back
    return x, out


def _centred(m: QuantLinear) -> tuple[int, torch.Tensor]:
    """(c, s * (q - c) [in, out] in float64) with c the middle of the integer range."""
    c = 8 if m.bits == 4 else 128
    s, _ = m.scales_offsets()
    return c, s.double()[m.g_idx.long()] * (m.int_weight().double() - c)


def _rounded(blocks: torch.Tensor) -> torch.Tensor:
    """The kernel's int8 rounding of 32-feature blocks, back as float64 values."""
    xf = blocks.float()
    amax = xf.abs().amax(-1, keepdim=True)  # float32, as the kernel
    # 127 / amax correctly rounded, as the C division (torch's scalar / tensor is not)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    xq = torch.round(xf * inv)  # round half to even, as vcvtps2dq / nearbyintf
    return xq.double() * (amax.double() / 127)


def _simulate(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in float64: y = xq~ @ (s * (q - c)).T + x @ (o + c * s).T + b."""
    x, approx = _per_block(m, x, _rounded)
    c, centred = _centred(m)
    s, o = m.scales_offsets()
    offsets = (o.double() + c * s.double())[m.g_idx.long()]
    y = approx @ centred + x @ offsets
    return y if m.bias is None else y + m.bias.double()


def _bound(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """Largest possible |kernel - exact| from the activation rounding: sum over features of
    |s * (q - c)| * (block's largest |x|) / 254."""
    _, half_step = _per_block(
        m, x, lambda b: (b.abs().amax(-1, keepdim=True) / 254).expand(-1, -1, 32)
    )
    return half_step @ _centred(m)[1].abs()


CASES = [
    (4, 32, "float", False),  # GGUF Q4_1
    (4, 64, "gptq_v2", False),
    (4, 32, "gptq", True),  # GPTQ act-order: the input permuted in the kernel
    (4, -1, "gptq_v2", False),  # one group per channel
    (8, 32, "gptq_v2", False),
    (8, -1, "gptq", False),  # the int8 head
    (8, 64, "float", True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,group_size,zero_format,act_order", CASES)
@pytest.mark.parametrize("rows", [1, 5])
def test_kernel_equals_its_arithmetic_in_float32(backend, bits, group_size, zero_format,
                                                 act_order, rows):  # fmt: skip
    m = _layer(bits, group_size, zero_format=zero_format, act_order=act_order)
    m.set_backend(backend)
    x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(1)) * 3
    x[0, :32] = 0  # an all-zero block: scale 0, no division by zero
    got = m(x)
    want = _simulate(m, x)
    # the same integers; float32 sums of <= 128 terms: a few ulps of the larger terms
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max())
    exact = F.linear(x.double(), m.dequantize(torch.float64), None if m.bias is None
                     else m.bias.double())  # fmt: skip
    assert ((got.double() - exact).abs() <= _bound(m, x) * 1.001 + 1e-4).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_activations_round_the_output_once(backend, dtype):
    m = _layer(4, 32, n=64, zero_format="float")
    m.set_backend(backend)
    x = torch.randn(3, 2, 128, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = m(x)
    assert got.dtype == dtype and got.shape == (3, 2, 64)
    # the same float32 arithmetic as float32 inputs, then one rounding to nearest even
    torch.testing.assert_close(got, m(x.float()).to(dtype), rtol=0, atol=0)
    want = _simulate(m, x.float()).view(3, 2, 64)
    torch.testing.assert_close(got.double(), want, rtol=2**-7, atol=1e-3)


@needs_simd
@needs_compiler
def test_simd_and_portable_builds_agree_and_threads_do_not_change_results():
    m = _layer(4, 64, n=208, k=256, zero_format="gptq", act_order=True)
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(3))  # parallel quantize
    m.set_backend("native")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = m(x)
        torch.set_num_threads(2)
        two = m(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each output is computed whole by one thread
    m.set_backend("native_portable")
    torch.testing.assert_close(m(x), one, rtol=1e-5, atol=1e-5 * one.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rows_and_non_contiguous_inputs(backend):
    m = _layer(8, 32)
    m.set_backend(backend)
    assert m(torch.zeros(0, 128)).shape == (0, 48)
    x = torch.randn(128, 6).t()  # [6, 128], not contiguous
    torch.testing.assert_close(m(x), m(x.contiguous()), rtol=0, atol=0)


def test_layouts_the_kernel_cannot_run_are_not_planned():
    assert native_plan(_layer(3, 32, n=64)) is None  # 3 bits
    assert native_plan(_layer(4, 16, n=64, k=128)) is None  # groups of 16
    assert native_plan(_layer(2, 32, n=64)) is None
    m = _layer(4, 32, n=64)
    m.set_backend("native_portable")
    with pytest.raises(ValueError, match="cannot run"):
        m.kernel_for(torch.device("meta"), torch.float32)


def test_a_missing_compiler_is_a_typed_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PLUGFORMER_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(native.NativeKernelError, match="no C compiler"):
        native._build(portable=True)
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\necho 'fake-cc 1.0'; [ \"$1\" = --version ] && exit 0\n"
                    "echo 'error: this compiler always fails' >&2; exit 1\n")  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(native.NativeKernelError, match="this compiler always fails"):
        native._build(portable=True)
    assert not list(tmp_path.glob("kernels/*/*.so"))  # nothing half-written is left


@needs_compiler
def test_the_library_is_compiled_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("PLUGFORMER_CACHE", str(tmp_path))
    first = native._build(portable=True)
    stamp = first.stat().st_mtime_ns
    assert native._build(portable=True) == first and first.stat().st_mtime_ns == stamp
    assert first.parent.parent == tmp_path / "kernels"


def test_linear_kernel_config_is_checked_before_loading(monkeypatch):
    with pytest.raises(ConfigError, match="did you mean 'native'"):
        plugformer.Engine.from_overrides(["model=tiny", "linear_kernel=nativ"])
    monkeypatch.setenv("PLUGFORMER_NATIVE", "0")
    native.unavailable_reason.cache_clear()
    try:
        assert not native.available()
        with pytest.raises(ConfigError, match="PLUGFORMER_NATIVE=0"):
            plugformer.Engine.from_overrides(["model=tiny", "linear_kernel=native"])
        m = _layer(4, 32, n=64)
        assert m.kernel_for(torch.device("cpu"), torch.bfloat16)[0] == "torch_int4"
    finally:
        monkeypatch.delenv("PLUGFORMER_NATIVE")
        native.unavailable_reason.cache_clear()


@needs_simd
def test_a_quantized_model_runs_on_the_native_kernel_in_float32():
    base = ["model=tiny", "quant=rtn", "quant.bits=4", "quant.group_size=32"]
    exact = plugformer.Engine.from_overrides(base)  # float32: the dequantized matmul
    fast = plugformer.Engine.from_overrides([*base, "linear_kernel=native"])
    layers = [m for m in fast.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.kernel_for(torch.device("cpu"), torch.float32)[0] == "native"
                          for m in layers)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, fast.spec.vocab_size, (2, 12), generator=gen)
    want, got = exact.logits(ids), fast.logits(ids)
    # int8 activations: ~0.4% of each 32-block's largest |x| per feature, through every layer
    torch.testing.assert_close(got, want, rtol=0.03, atol=0.03 * want.abs().max().item())
    greedy = {"temperature": 0.0, "ignore_eos": True, "max_new_tokens": 8}
    assert len(fast.generate(ids[0].tolist(), **greedy).token_ids) == 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,group_size,zero_format,act_order", CASES)
def test_the_kernel_keeps_the_only_copy_of_the_integer_weights(backend, bits, group_size,
                                                               zero_format, act_order):  # fmt: skip
    m = _layer(bits, group_size, n=64, k=512, zero_format=zero_format, act_order=act_order)
    m.set_backend(backend)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    buffers_before = memory.weight_bytes(m)[0]
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(4))
    y = m(x)
    assert "qweight" not in dict(m.named_buffers())
    total, copies = memory.weight_bytes(m)
    qweight_bytes = before["qweight"].numel() * 4
    # the kernel's weights replace qweight (plus its scales and offsets, a fraction of them):
    # no second copy of the integers
    assert total == buffers_before - qweight_bytes + copies
    (kernel,) = m._kernels.values()
    integers = [t for t in kernel.held if t.dtype == torch.uint8]
    assert [t.numel() for t in integers] == [qweight_bytes]  # one copy, as many bytes
    after = m.state_dict()  # rebuilt bit for bit for saving; the kernel keeps the only copy
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert "qweight" not in dict(m.named_buffers())
    assert torch.equal(m(x), y)
    assert torch.equal(m.qweight, before["qweight"])  # read: back in the buffers
    assert "qweight" in dict(m.named_buffers())
    m(x)  # compact again
    m.set_backend("dequant")  # a new kernel: the weights come back first
    assert torch.equal(m.qweight, before["qweight"])
    torch.testing.assert_close(m(x), F.linear(x, m.dequantize(), m.bias), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_weights_reach_a_compact_layer(backend):
    m, other = _layer(4, 32, seed=0), _layer(4, 32, seed=1)
    m.set_backend(backend)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(5))
    m(x)  # compact
    m.load_state_dict(other.state_dict())  # copied into the buffers in place
    other.set_backend(backend)
    assert torch.equal(m(x), other(x))
    m(x)
    m.qweight = _layer(4, 32, seed=2).qweight  # replaced
    assert torch.equal(m.qweight, _layer(4, 32, seed=2).qweight)
    assert "qweight" in dict(m.named_buffers())
    m = m.to(torch.float64)  # a move or cast rebuilds from the buffers
    assert torch.equal(m.qweight, _layer(4, 32, seed=2).qweight)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,act_order", [(4, False), (8, False), (4, True)])
def test_packing_in_row_chunks_gives_the_same_layout(backend, bits, act_order, monkeypatch):
    m = _layer(bits, 32, n=40, zero_format="gptq", act_order=act_order)
    m.set_backend(backend)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(6))
    whole = m(x)
    monkeypatch.setattr(qkernels, "PACK_ROWS", 16)  # 3 chunks, the last one padded
    m.set_backend(backend)
    assert torch.equal(m(x), whole)


def test_an_unwritable_cache_is_a_typed_error(monkeypatch, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("PLUGFORMER_CACHE", str(blocker))
    with pytest.raises(native.NativeKernelError, match="cannot write the kernel cache"):
        native._build(portable=True)
