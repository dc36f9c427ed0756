"""Gradients through a frozen quantized layer (QLoRA): ``y = x @ W.T + b`` with ``W`` kept as
the layer's integers, for training adapters on a quantized base.

Forward and backward both dequantize ``W`` a slice of output rows at a time
(:func:`dequantize_rows`), so no dense copy of the whole weight exists at any moment: forward
computes ``y[..., rows] = x @ W[rows].T``, backward ``dx = sum over slices of
dy[..., rows] @ W[rows]``. The weights get no gradient (the base is frozen). In float32 the
result equals the dense layer's up to the GEMM's summation order.
"""

from __future__ import annotations

from typing import Any

import torch

from plugformer.core.quant.pack import unpack

#: elements of one dequantized slice (4 Mi float32 = 16 MiB at most, whatever the layer)
SLICE_ELEMENTS = 1 << 22


def dequantize_rows(layer: Any, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``start:stop`` of a :class:`~plugformer.core.quant.linear.QuantLinear`'s weight,
    [stop - start, in] in ``dtype``, computed in float32 as ``dequantize`` does."""
    q = unpack(layer.qweight[:, start:stop], layer.bits, dim=0).float()  # [in, n]
    g = layer.g_idx.long()
    s = layer.scales[:, start:stop].float()[g]  # [in, n]
    if layer.zero_format == "float":
        w = q * s + layer.offsets[:, start:stop].float()[g]
    else:
        w = s * (q - layer.zero_points()[:, start:stop].float()[g])
    return w.t().to(dtype)


def _slices(layer: Any) -> list[tuple[int, int]]:
    """Output-row ranges of about :data:`SLICE_ELEMENTS` weights each, on the packing grid of
    the zero points (32 / bits columns per int32 word)."""
    step = max(1, SLICE_ELEMENTS // max(1, layer.in_features))
    step = max(32, step - step % 32)
    n = layer.out_features
    return [(i, min(i + step, n)) for i in range(0, n, step)]


class _QuantMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Any) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        ctx.layer = layer
        out = x.new_empty(*x.shape[:-1], layer.out_features)
        for a, b in _slices(layer):
            out[..., a:b] = x @ dequantize_rows(layer, a, b, x.dtype).t()
        if layer.bias is not None:
            out += layer.bias.to(x.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        layer = ctx.layer
        dx = None
        for a, b in _slices(layer):
            part = grad[..., a:b] @ dequantize_rows(layer, a, b, grad.dtype)  # [..., in]
            dx = part if dx is None else dx.add_(part)
        assert dx is not None
        return dx, None


def quant_linear(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` differentiable in ``x`` without a dense weight (see the module docstring);
    ``layer`` is a frozen :class:`~plugformer.core.quant.linear.QuantLinear`."""
    out: torch.Tensor = _QuantMatmul.apply(x, layer)
    return out
