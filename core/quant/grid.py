"""Uniform integer quantization grids shared by the quantizers (round-to-nearest and GPTQ).

The grid of a group of weights is GPTQ's (``quant.py`` of Frantar et al., 2022): the range
``[min(x, 0), max(x, 0)]`` over ``2**bits - 1`` steps; symmetric grids use ``[-m, m]`` with
``m = max |x|`` and the zero point ``2**(bits-1)``. Two choices keep saved checkpoints exact:

* scales are rounded to float16 before use, since the checkpoint stores them in float16, so the
  weights the quantizer computes with are exactly the ones a reader dequantizes;
* asymmetric zero points are at least 1: GPTQ v1 checkpoints store ``zero - 1``, and readers
  (exllama kernels, vLLM) add 1 back without wrapping, so a zero point of 0 would read as
  ``2**bits``.
"""

from __future__ import annotations

import torch
from torch import nn

from plugformer.core.memory import release_free_memory
from plugformer.core.quant.linear import QuantLinear


def grid(
    w: torch.Tensor, bits: int, sym: bool, mse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [rows] of each row of ``w`` [rows, cols] (float32). ``mse``
    shrinks each row's range by the factor in [0.8, 1] that minimises the row's
    ``sum |w - q(w)|^2.4`` (GPTQ's ``--mse`` grid search; clipping outliers)."""
    w = w.float()
    zero_t = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zero_t)
    xmax = torch.maximum(w.max(dim=1).values, zero_t)
    if not mse:
        return _grid(xmin, xmax, bits, sym)
    best = torch.full_like(xmin, float("inf"))
    scale, zero = _grid(xmin, xmax, bits, sym)
    for i in range(20):
        p = 1 - 0.01 * i
        s, z = _grid(p * xmin, p * xmax, bits, sym)
        q = quantize_ints(w, s[:, None], z[:, None], bits)
        err = (dequantize_ints(q, s[:, None], z[:, None]) - w).abs().pow(2.4).sum(dim=1)
        better = err < best
        best = torch.where(better, err, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def _grid(
    xmin: torch.Tensor, xmax: torch.Tensor, bits: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    maxq = 2**bits - 1
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax  # GPTQ keeps xmin = 0 for a row without negatives; that clips its top
    dead = (xmin == 0) & (xmax == 0)
    xmin = torch.where(dead, -1.0, xmin)
    xmax = torch.where(dead, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).half().float()
    scale = torch.where(scale == 0, torch.finfo(torch.float16).tiny, scale)  # fp16 underflow
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.round(-xmin / scale).clamp(1, maxq)
    return scale, zero


def quantize_ints(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """Integers ``clamp(round(w / scale) + zero, 0, 2**bits - 1)``; ``scale``/``zero``
    broadcast against ``w``."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def dequantize_ints(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def rtn(linear: nn.Linear, bits: int, group_size: int, sym: bool) -> QuantLinear:
    """Round-to-nearest quantization of ``linear`` (per channel for ``group_size=-1``)."""
    w = linear.weight.detach().float()  # [out, in]
    out_features, in_features = w.shape
    gs = in_features if group_size == -1 else group_size
    groups = w.reshape(out_features, in_features // gs, gs).transpose(0, 1)  # [G, out, gs]
    scales, zeros, qs = [], [], []
    for g in groups:
        s, z = grid(g, bits, sym)
        qs.append(quantize_ints(g, s[:, None], z[:, None], bits))
        scales.append(s)
        zeros.append(z)
    q = torch.cat(qs, dim=1).to(torch.int32)  # [out, in]
    return QuantLinear.from_ints(
        q, torch.stack(scales), torch.stack(zeros), None, bits, group_size,
        linear.bias, sym=sym,
    )  # fmt: skip


def rtn_by_rows(linear: nn.Linear, bits: int, sym: bool, rows: int = 1024) -> QuantLinear:
    """Per-channel :func:`rtn` of ``linear`` computed ``rows`` output rows at a time, so that
    the float32 temporaries stay small for a wide layer (an LM head of 49152 rows); the result
    is the same layer ``rtn(linear, bits, -1, sym)`` gives."""
    out_features, in_features = linear.weight.shape
    per_word = 32 // bits
    rows = max(per_word, rows - rows % per_word)  # whole int32 words of packed zero points
    w = linear.weight.detach()
    with torch.device(w.device):
        full = QuantLinear(in_features, out_features, bits, -1, linear.bias is not None, sym=sym)
    for r0 in range(0, out_features, rows):
        r1 = min(r0 + rows, out_features)
        part = nn.Linear(in_features, r1 - r0, bias=False, device="meta")
        part.weight = nn.Parameter(w[r0:r1], requires_grad=False)  # a view: no copy
        m = rtn(part, bits, -1, sym)
        full.qweight[:, r0:r1] = m.qweight
        full.scales[:, r0:r1] = m.scales
        full.qzeros[:, r0 // per_word : -(-r1 // per_word)] = m.qzeros
        del m, part
        release_free_memory()  # the chunk's float temporaries go back before the next
    if linear.bias is not None:
        full.bias = linear.bias.detach().clone()
    return full
