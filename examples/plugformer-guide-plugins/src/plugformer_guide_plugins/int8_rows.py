"""Round-to-nearest int8 weight-only quantization, one scale per output row: the "RTN"
baseline of GPTQ (Frantar et al., 2022, arXiv:2210.17323) at 8 bits, written as a third-party
quantizer with a layer class of its own.

Every ``nn.Linear`` inside the decoder's blocks (``layers.*``; the embedding and the head stay
float) becomes an :class:`Int8RowLinear` holding ``q`` uint8 [out, in] and, per output row, a
scale ``s`` and a zero point ``z``: ``W = s * (q - z)``. Symmetric (``quant.sym=true``, the
default): ``z = 128`` and ``s = max|w| / 127``; asymmetric: the grid spans the row's
``[min, max]``. Scales are rounded to float16 on the spot, because that is how the core's
quantized layer stores them, so the layer computes the same weights before and after the swap.

The layer declares ``quantized_weights()`` (a capability of quantized layers,
``LAYER_CAPABILITIES`` in ``plugformer.core.interfaces.quant``): right after ``quantize()``
the engine swaps in the core's ``QuantLinear`` holding the same integers, which
``plugformer quantize`` saves as a GPTQ checkpoint, ``parallel=tensor`` cuts and the core's
kernels run. Without that method the layer would keep its own forward, and saving it would be
refused, naming its class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core import ModelSpec, QuantConfig, QuantizedWeights, hookimpl


@dataclass
class Int8RowsConfig(QuantConfig):
    name: str = "int8_rows"
    sym: bool = True  # zero point 128 and s = max|w| / 127; false: the grid spans [min, max]


class Int8RowLinear(nn.Module):
    """``y = x W^T + bias`` with ``W = s * (q - z)`` per output row, computed in float32."""

    def __init__(self, linear: nn.Linear, sym: bool) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        if sym:
            scale = w.abs().amax(dim=1) / 127  # [out]
        else:
            lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)  # 0 on the grid
            scale = (hi - lo) / 255
        scale = scale.half().float()  # the core's layer stores float16 scales
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row
        zero = torch.full_like(scale, 128.0) if sym else torch.round(-lo / scale).clamp(0, 255)
        q = torch.round(w / scale[:, None]) + zero[:, None]  # [out, in]
        self.sym = sym
        self.register_buffer("q", q.clamp(0, 255).to(torch.uint8))  # [out, in]
        self.register_buffer("scale", scale)  # [out]
        self.register_buffer("zero", zero)  # [out], integers stored as floats
        self.bias = linear.bias

    def dequantize(self) -> torch.Tensor:
        return (self.q.float() - self.zero[:, None]) * self.scale[:, None]  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)

    def quantized_weights(self) -> QuantizedWeights:
        return QuantizedWeights(
            q=self.q.long(),  # [out, in] in [0, 256)
            scales=self.scale[None],  # [groups = 1, out]
            zeros=self.zero[None].long(),  # [1, out] integer zero points
            bits=8,
            group_size=-1,  # one group: the whole row
            bias=self.bias,
            sym=self.sym,
        )


class Int8Rows:
    """Rounds every linear layer of the decoder's blocks to int8, per output row."""

    def __init__(self, config: Int8RowsConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec

    def check(self) -> list[str]:
        # the core's layer packs four 8-bit weights per int32, along both dimensions
        s = self.spec
        sizes = {
            "hidden_size": s.hidden_size,
            "num_heads * head_dim": s.num_heads * s.dim_per_head,
            "num_kv_heads * head_dim": s.kv_heads * s.dim_per_head,
            "intermediate_size": s.intermediate_size,
        }
        return [
            f"int8_rows needs {what} to be a multiple of 4, got {n}"
            for what, n in sizes.items()
            if n % 4
        ]

    @torch.no_grad()
    def quantize(
        self, model: nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> nn.Module:
        for path, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and path.startswith("layers."):
                parent, _, leaf = path.rpartition(".")
                layer = Int8RowLinear(module, self.config.sym).to(module.weight.device)
                setattr(model.get_submodule(parent), leaf, layer)
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("quant", "int8_rows", Int8Rows, Int8RowsConfig)
