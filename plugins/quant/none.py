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


class NoQuant:
    """Returns the model unchanged (a quantized checkpoint runs as it is stored)."""

    keeps_checkpoint_quantization = True  # GPTQ checkpoints and GGUF Q4/Q8 weights stay quantized

    def __init__(self, config: NoQuantConfig, spec: ModelSpec) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []

    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("quant", "none", NoQuant, NoQuantConfig)
