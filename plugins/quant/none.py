"""No quantization: weights stay in the model's floating-point dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.model.spec import ModelSpec
from plugformer.core.quant import QuantConfig


@dataclass
class NoQuantConfig(QuantConfig):
    name: str = "none"
    # GGUF Q4_0/Q4_1/Q8_0 weights: false runs them quantized, true dequantizes them to
    # model.dtype while loading (dense layers; GPTQ checkpoints always run quantized)
    dequantize: bool = False


class NoQuant:
    """Returns the model unchanged (a quantized checkpoint runs as it is stored, unless
    ``quant.dequantize=true`` for GGUF files)."""

    def __init__(self, config: NoQuantConfig, spec: ModelSpec) -> None:
        self.config = config
        # read by core.qcheckpoint.prepare_quantized: GGUF Q4/Q8 weights stay quantized
        self.keeps_checkpoint_quantization = not config.dequantize

    def check(self) -> list[str]:
        return []

    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("quant", "none", NoQuant, NoQuantConfig)
