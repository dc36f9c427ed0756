"""No quantization: weights stay in the model's floating-point dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.quant import QuantConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.quant.grid import rtn_by_rows
from plugformer.core.quant.linear import swap_module


@dataclass
class NoQuantConfig(QuantConfig):
    name: str = "none"
    # GGUF Q4_0/Q4_1/Q8_0 weights: false runs them quantized, true dequantizes them to
    # model.dtype while loading (dense layers; GPTQ checkpoints always run quantized)
    dequantize: bool = False
    # 8: the output head as per-channel int8 (round-to-nearest of its weights; PyTorch's int8
    # op reads a quarter of float32's bytes per token), for decode speed; null: as loaded
    head_bits: int | None = None


class NoQuant:
    """Returns the model unchanged (a quantized checkpoint runs as it is stored, unless
    ``quant.dequantize=true`` for GGUF files)."""

    def __init__(self, config: NoQuantConfig, spec: ModelSpec) -> None:
        self.config = config
        # read by core.qcheckpoint.prepare_quantized: GGUF Q4/Q8 weights stay quantized
        self.keeps_checkpoint_quantization = not config.dequantize

    def check(self) -> list[str]:
        bits = self.config.head_bits
        if bits is not None and (isinstance(bits, bool) or bits != 8):
            return [f"quant.head_bits={bits!r}: 8 (int8 head) or null (the head as loaded)"]
        return []

    @torch.no_grad()
    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        head = getattr(model, "head", None)
        if self.config.head_bits is not None and isinstance(head, torch.nn.Linear):
            # one scale per vocabulary row: the int8 op's layout (a tied embedding keeps its
            # float table for lookups)
            quantized = rtn_by_rows(head, self.config.head_bits, sym=True)
            swap_module(model, "head", quantized.to(head.weight.device))
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("quant", "none", NoQuant, NoQuantConfig)
