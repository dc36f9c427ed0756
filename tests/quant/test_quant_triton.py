"""The Triton dequant-matmul kernel against the dequantized reference: on CPU through Triton's
interpreter (``TRITON_INTERPRET=1``), and for real on a CUDA GPU when there is one.

Triton picks interpreted or compiled functions when ``triton.language`` is imported, so the
interpreted tests run in a fresh process started with ``TRITON_INTERPRET=1``
(:func:`test_interpreter_suite`); run directly under that variable, they run in place.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from plugformer.core.quant.linear import QuantLinear

pytest.importorskip("triton")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
in_interpreter = pytest.mark.skipif(
    not INTERPRET, reason="runs in the TRITON_INTERPRET=1 process of test_interpreter_suite"
)


@pytest.mark.skipif(INTERPRET, reason="this is that process")
def test_interpreter_suite():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def _layer(bits, group_size, k, n, *, act_order=False, zero_format="gptq", seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size == -1 else k // group_size
    q = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(groups, n, generator=g) * 0.02 + 0.005
    if zero_format == "float":
        zeros = -7.5 * scales
    else:
        zeros = torch.randint(1, 2**bits, (groups, n), generator=g)
    g_idx = torch.arange(k) // (k if group_size == -1 else group_size)
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=g)]
    bias = torch.randn(n, generator=g)
    return QuantLinear.from_ints(
        q, scales, zeros, g_idx, bits, group_size, bias, desc_act=act_order,
        zero_format=zero_format,
    )  # fmt: skip


CASES = [  # bits, group_size, k, n, act_order, zero_format (k, n not multiples of the blocks)
    (4, 32, 96, 48, False, "gptq"),
    (4, 16, 80, 40, True, "gptq"),
    (4, 32, 64, 64, False, "float"),
    (8, -1, 48, 24, False, "gptq"),
    (2, 32, 64, 80, True, "gptq"),
]


@in_interpreter
@pytest.mark.parametrize("bits,group_size,k,n,act_order,zero_format", CASES)
@pytest.mark.parametrize("tokens", [1, 19])
def test_interpreted_kernel_equals_the_reference(
    bits, group_size, k, n, act_order, zero_format, tokens
):
    m = _layer(bits, group_size, k, n, act_order=act_order, zero_format=zero_format)
    m.set_backend("triton")
    x = torch.randn(tokens, k)
    ref = F.linear(x, m.dequantize(), m.bias)
    # float32 products summed in another order (and w = q * s + o instead of s * (q - z))
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    x16 = x.half()
    ref16 = F.linear(x16.float(), m.dequantize(), m.bias)
    # float16 weights and output rounding
    torch.testing.assert_close(m(x16).float(), ref16, rtol=4e-3, atol=4e-3 * ref16.abs().max())


@in_interpreter
def test_three_bits_are_refused_by_the_kernel():
    m = _layer(3, 32, 64, 32)
    m.set_backend("triton")
    with pytest.raises(ValueError, match="2, 4 or 8 bits, not 3"):
        m(torch.randn(1, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits,group_size,k,n,act_order,zero_format", CASES)
def test_gpu_kernel_equals_the_reference(bits, group_size, k, n, act_order, zero_format):
    m = _layer(bits, group_size, k, n, act_order=act_order, zero_format=zero_format).cuda()
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
        x = torch.randn(33, k, device="cuda").to(dtype)
        assert m.kernel_for(x.device, dtype)[0] == "triton"
        ref = F.linear(x.float(), m.dequantize(), m.bias.float())
        torch.testing.assert_close(m(x).float(), ref, rtol=tol, atol=tol * ref.abs().max())
