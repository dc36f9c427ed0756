"""The quantizer interface: rewrites a model's linear layers to quantized ones.

Optional capabilities of a quantizer: :data:`CAPABILITIES`; of the modules it puts in a model:
:data:`LAYER_CAPABILITIES`.

What a quantizer returns: the model with linear layers replaced by quantized ones. The core's
layer is :class:`plugformer.core.quant.linear.QuantLinear` (the GPTQ layout: build one with
``QuantLinear.from_ints(q, scales, zeros, g_idx, bits, group_size)``); it is what
``plugformer quantize`` saves, what ``parallel=tensor`` cuts through its integers and scales,
and what the native CPU kernel runs. A layer of the quantizer's own class joins all of that by
declaring ``quantized_weights()`` (:data:`LAYER_CAPABILITIES`), returning its weights as a
:class:`QuantizedWeights`: the engine then swaps in the equal ``QuantLinear`` right after
``quantize()``. A layer without it keeps its own forward, and saving or cutting it is refused
naming its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability


@dataclass
class QuantConfig:
    """Base config of every quantizer; ``name`` is its registry name."""

    name: str = ""


@dataclass
class QuantizedWeights:
    """A weight-only quantized linear layer as plain tensors: ``W = s * (q - zero)`` per group
    (``zero_format="float"``: ``W = s * q + offset``), ``W`` [out, in]."""

    q: torch.Tensor  # [out, in] unsigned integers in [0, 2**bits)
    scales: torch.Tensor  # [groups, out]
    zeros: torch.Tensor  # [groups, out]: integer zero points, or float offsets
    bits: int  # 2, 3, 4 or 8
    group_size: int  # input features per group; -1: one group per output row
    g_idx: torch.Tensor | None = None  # [in] group of each input feature (act-order), or None
    bias: torch.Tensor | None = None  # [out]
    sym: bool = True  # symmetric grid (zero point 2**(bits-1))
    zero_format: str = field(default="gptq_v2")  # "gptq_v2": zeros are the zero points;
    # "float": zeros are float offsets (GGUF Q4_1 style)


@runtime_checkable
class Quantizer(Protocol):
    """Built by ``builder(config: QuantConfig, spec: ModelSpec)``."""

    def check(self) -> list[str]:
        """Reasons this quantizer cannot handle the model (e.g. a group size that does not
        divide a layer's input features)."""
        ...

    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        """Return the quantized model; ``calibration`` is a list of token-id tensors [1, S]."""
        ...


#: Optional capabilities of a quantizer (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "calibration": Capability(
        None,
        "CalibrationRequest | None (plugformer.core.quant.calibrate): the engine then passes "
        "quantize() token ids [1, S] drawn from the calibration text with the model's tokenizer.",
    ),
    "keeps_checkpoint_quantization": Capability(
        False,
        "bool: a quantized checkpoint (GPTQ directory, GGUF Q4/Q8 weights) runs as it is stored "
        "(quant=none). Otherwise the quantizer gets float weights: GGUF blocks are dequantized "
        "on load and GPTQ checkpoints are refused.",
    ),
    "seconds": Capability(
        None,
        "float | None: how long the last quantize() took; plugformer quantize reports it.",
    ),
}

#: Optional capabilities of a module inside a built model (quantized layers use them).
LAYER_CAPABILITIES: dict[str, Capability] = {
    "keep_dtype": Capability(
        (),
        "tuple[str, ...]: names of the module's tensors loaded in their own dtype (packed "
        "integers, float16 scales) instead of being cast to the model's dtype.",
    ),
    "quantized_weights": Capability(
        None,
        "method () -> QuantizedWeights: a third-party quantized layer's weights as plain "
        "tensors; the engine swaps in the core's QuantLinear holding them (saved by plugformer "
        "quantize, cut by parallel=tensor, run on the native kernel).",
    ),
    "kernel_tensors": Capability(
        None,
        "method () -> list[Tensor]: the tensors the module's built kernels keep besides its "
        "buffers (their weight copies), counted in the weights' memory by plugformer bench.",
    ),
}
