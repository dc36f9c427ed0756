"""Round-to-nearest weight-only quantization: the baseline of GPTQ (Frantar et al., 2022,
arXiv:2210.17323, its "RTN").

Every linear layer inside the decoder's blocks is rounded to a uniform integer grid, per output
channel (``group_size=-1``) or per group of ``group_size`` input features, symmetric (zero point
``2**(bits-1)``) or asymmetric (grid over ``[min, max]``). Integers, scales and zero points are
stored in the GPTQ layout (:class:`plugformer.core.quant.linear.QuantLinear`), so an RTN model saves
and loads like a GPTQ one. No calibration data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.quant import QuantConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.memory import release_free_memory
from plugformer.core.quant.calibrate import (
    block_linears,
    check_model,
    settings_problems,
    spec_in_features,
)
from plugformer.core.quant.grid import rtn
from plugformer.core.quant.linear import swap_module


@dataclass
class RTNConfig(QuantConfig):
    name: str = "rtn"
    bits: int = 8  # 2, 3, 4 or 8
    group_size: int = -1  # -1: one scale per output channel
    sym: bool = True


class RTN:
    """Round-to-nearest int8/int4 (2, 3, 4, 8 bits), per channel or group-wise."""

    def __init__(self, config: RTNConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec

    def check(self) -> list[str]:
        c = self.config
        return settings_problems(c.bits, c.group_size, spec_in_features(self.spec))

    @torch.no_grad()
    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        c = self.config
        check_model(model, c.bits, c.group_size)
        start = time.perf_counter()
        # paths, not modules: a list of the float layers would keep them all alive to the end
        for path in [path for path, _ in block_linears(model)]:
            linear = model.get_submodule(path)
            q = rtn(linear, c.bits, c.group_size, c.sym)
            swap_module(model, path, q.to(linear.weight.device))
            del linear, q
            release_free_memory()  # this layer's float weight and the rounding's temporaries
        self.seconds = time.perf_counter() - start  # read by `plugformer quantize`
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("quant", "rtn", RTN, RTNConfig)
