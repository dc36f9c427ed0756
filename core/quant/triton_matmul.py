"""Triton dequant-matmul kernel for :class:`~plugformer.core.quant.linear.QuantLinear` (GPU).

``y[m, n] = sum_k x[m, k] * (q[k, n] * s[g_idx[k], n] + o[g_idx[k], n])``: each program computes
a ``BLOCK_M x BLOCK_N`` tile of ``y``, unpacking the GPTQ ``qweight`` words (2, 4 or 8 bits) of
a ``BLOCK_K x BLOCK_N`` tile, looking up each row's group through ``g_idx`` (so act-order
checkpoints run as stored) and dequantizing with per-group scales ``s`` and offsets
``o = -scale * zero`` (or GGUF Q4_1's minimum) before ``tl.dot``. The weights are never
materialized in floating point outside the tile.

Float32 inputs multiply in IEEE float32 (no TF32), float16/bfloat16 inputs in their own dtype
with float32 accumulation. With ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors
(Triton's interpreter), which is how the CPU test suite checks it against the dequantized
reference. The kernel is jitted on first use, in the mode the environment asks for then.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from plugformer.core.quant.layout import QuantLayout

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 32


def _qmm(
    x_ptr, qw_ptr, s_ptr, o_ptr, g_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn, stride_ym, stride_yn,
    BITS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_ok = k < K
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + k[None, :] * stride_xk,
            mask=(rm[:, None] < M) & k_ok[None, :],
            other=0.0,
        )
        tile_ok = k_ok[:, None] & (rn[None, :] < N)
        words = tl.load(
            qw_ptr + (k // PACK)[:, None] * stride_qk + rn[None, :] * stride_qn,
            mask=tile_ok,
            other=0,
        )
        q = (words >> ((k % PACK) * BITS)[:, None]) & MASK  # [BLOCK_K, BLOCK_N]
        g = tl.load(g_ptr + k, mask=k_ok, other=0)
        s = tl.load(
            s_ptr + g[:, None] * stride_sg + rn[None, :] * stride_sn, mask=tile_ok, other=0.0
        )
        o = tl.load(
            o_ptr + g[:, None] * stride_sg + rn[None, :] * stride_sn, mask=tile_ok, other=0.0
        )
        w = q.to(tl.float32) * s + o
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    tl.store(
        y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn,
        acc.to(y_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rn[None, :] < N),
    )


_jitted: dict[bool, Any] = {}


def _kernel() -> Any:
    interpret = bool(triton.knobs.runtime.interpret)
    if interpret not in _jitted:
        _jitted[interpret] = triton.jit(_qmm)
    return _jitted[interpret]


def qmatmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
) -> torch.Tensor:
    """``x`` [M, K] times the weight dequantized from GPTQ ``qweight`` [K * bits / 32, N],
    float32 ``scales``/``offsets`` [groups, N] and ``g_idx`` [K] -> [M, N] in ``x``'s dtype."""
    if bits not in (2, 4, 8):
        raise ValueError(f"the Triton kernel packs 2, 4 or 8 bits, not {bits}")
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _kernel()[grid](
        x, qweight, scales, offsets, g_idx, y,
        m, n, k,
        x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), y.stride(0), y.stride(1),
        BITS=bits, IEEE=x.dtype == torch.float32,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return y


def triton_kernel(m: QuantLayout, dtype: torch.dtype) -> Any:
    """A forward for ``m`` running :func:`qmatmul` (inputs on ``m``'s device, in ``dtype``)."""
    if m.bits not in (2, 4, 8):
        raise ValueError(f"the Triton kernel packs 2, 4 or 8 bits, not {m.bits}")
    s, o = m.scales_offsets()  # float32 [groups, out]
    qweight, g_idx = m.qweight.contiguous(), m.g_idx.contiguous()
    bias = None if m.bias is None else m.bias.to(dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = qmatmul(x2, qweight, s, o, g_idx, m.bits).reshape(*x.shape[:-1], m.out_features)
        return y if bias is None else y + bias

    return forward
