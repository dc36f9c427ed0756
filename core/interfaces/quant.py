"""The quantizer interface: rewrites a model's linear layers to quantized ones.

Optional attributes a quantizer may have (read with ``getattr``; not part of the protocol):

* ``calibration``: a :class:`plugformer.core.quant.calibrate.CalibrationRequest`; the engine then
  passes ``quantize`` token ids drawn from the calibration text with the model's tokenizer;
* ``keeps_checkpoint_quantization``: true when a quantized checkpoint (GPTQ directory, GGUF
  Q4/Q8 weights) should run as it is stored (``quant=none``). Otherwise the quantizer gets float
  weights: GGUF blocks are dequantized on load and GPTQ checkpoints are refused.

Quantized layers are :class:`plugformer.core.quant.linear.QuantLinear` (the GPTQ layout), which
``plugformer quantize`` saves and ``model.path`` loads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class QuantConfig:
    """Base config of every quantizer; ``name`` is its registry name."""

    name: str = ""


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
