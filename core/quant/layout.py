"""The GPTQ weight layout as data: what a quantized layer holds, read by the kernels.

A kernel (:mod:`plugformer.core.quant.kernels`, :mod:`plugformer.core.quant.triton_matmul`)
reads a layer through :class:`QuantLayout`, never through the module class, so the kernels and
the layer (:class:`plugformer.core.quant.linear.QuantLinear`) do not import each other, and any
layer with these tensors runs on them. ``W = s * (q - zero)`` per group, ``W`` [out, in].
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from plugformer.core.quant.pack import SUPPORTED_BITS, run_length

#: how zero points are stored: GPTQ v1 integers (``zero - 1``), GPTQ v2 integers, or float
#: offsets (``W = s * q + o``: GGUF Q4_1 and asymmetric RTN)
ZERO_FORMATS = ("gptq", "gptq_v2", "float")


@runtime_checkable
class QuantLayout(Protocol):
    """A weight-only quantized linear layer's tensors, in the GPTQ layout."""

    in_features: int
    out_features: int
    bits: int  # 2, 3, 4 or 8
    group_size: int  # input features per scale; -1: one group per output row
    qweight: torch.Tensor  # [in * bits / 32, out] int32, packed along the input features
    scales: torch.Tensor  # [groups, out] float16
    g_idx: torch.Tensor  # [in] int32: the group of each input feature (act-order permutes it)
    bias: torch.Tensor | None  # [out]

    @property
    def groups(self) -> int:
        """Number of scale groups (rows of ``scales``)."""
        ...

    def int_weight(self) -> torch.Tensor:
        """The unsigned integer weights q [in, out] (int32)."""
        ...

    def scales_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, o)`` [groups, out] float32 with ``W = s * q + o``."""
        ...

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] in ``dtype`` (computed in float32)."""
        ...

    def extra_repr(self) -> str:
        """A one-line description (sizes, bits, group size) for error messages."""
        ...


def layout_problems(in_features: int, out_features: int, bits: int, group_size: int) -> list[str]:
    """Why a linear of these sizes cannot be stored in the GPTQ layout (empty when it can)."""
    if bits not in SUPPORTED_BITS:
        return [f"bits={bits} is not supported (supported: 2, 3, 4, 8)"]
    problems = []
    if group_size != -1 and (group_size <= 0 or in_features % group_size):
        problems.append(
            f"group_size={group_size} does not divide in_features={in_features}"
            if group_size > 0
            else f"group_size={group_size} must be positive or -1"
        )
    run = run_length(bits)
    for what, n in (("in_features", in_features), ("out_features", out_features)):
        if n % run:
            problems.append(f"{what}={n} is not a multiple of {run} ({bits}-bit packing)")
    return problems


def group_count(in_features: int, group_size: int) -> int:
    """Scale groups of a layer: one per ``group_size`` input features (-1: one)."""
    return 1 if group_size == -1 else in_features // group_size
