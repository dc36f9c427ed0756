"""The low-rank update LoRA-style adapters share (LoRA, DoRA, a third party's variant):
``delta(x) = B(A(dropout(x))) * scaling`` with ``A`` [r, in] and ``B`` [out, r], named as PEFT
names them (``lora_A.weight``, ``lora_B.weight``), and a builder with PEFT's settings.

A variant subclasses :class:`LowRankLayer` (its ``forward`` and ``merged_weight``) and
:class:`LowRankAdapter` (``layer``, ``peft_fields``, ``finish``); see
``plugins/adapters/dora.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plugformer.core.interfaces.adapter import AdapterConfig, AdapterDims

INITS = ("default", "gaussian")


@dataclass
class LowRankConfig(AdapterConfig):
    """PEFT's ``LoraConfig`` settings, as ``adapter.*`` keys."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r
    init: str = "default"  # default (Kaiming-uniform A) | gaussian (A ~ N(0, 1/r)); B = 0


class LowRankLayer(nn.Module):
    """One layer's ``A`` and ``B``; as a LoRA layer, ``y = base_out + delta(x)``."""

    def __init__(self, dims: AdapterDims, r: int, scaling: float, dropout: float) -> None:
        super().__init__()
        self.lora_A = nn.Linear(dims.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, dims.out_features, bias=False)
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        out: torch.Tensor = self.lora_B(self.lora_A(x)) * self.scaling
        return out

    def forward(self, x: torch.Tensor, base_out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return base_out + self.delta(self.dropout(x))

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.lora_B.weight @ self.lora_A.weight)


class LowRankAdapter:
    """Builds :attr:`layer` s for a :class:`LowRankConfig`: ``A`` drawn as ``nn.Linear`` draws
    its weight (Kaiming-uniform, a = sqrt(5)) or from N(0, 1/r) with ``init=gaussian``, ``B``
    zero, so a new adapter changes nothing until it trains."""

    layer: type[LowRankLayer] = LowRankLayer
    #: PEFT config fields of this variant (``use_dora`` ...)
    peft_fields: dict[str, Any] = {}

    def __init__(self, config: LowRankConfig, spec: Any = None) -> None:
        self.config = config

    def check(self) -> list[str]:
        c, problems = self.config, []
        if isinstance(c.r, bool) or not isinstance(c.r, int) or c.r <= 0:
            problems.append(f"adapter.r must be a positive integer, got {c.r!r}")
        if not c.alpha > 0:
            problems.append(f"adapter.alpha must be > 0, got {c.alpha}")
        if not 0 <= c.dropout < 1:
            problems.append(f"adapter.dropout must be in [0, 1), got {c.dropout}")
        if c.init not in INITS:
            problems.append(f"adapter.init must be one of {', '.join(INITS)}, got {c.init!r}")
        return problems

    @property
    def scaling(self) -> float:
        c = self.config
        return c.alpha / (math.sqrt(c.r) if c.rslora else c.r)

    def make(self, base: nn.Module, dims: AdapterDims, generator: torch.Generator) -> nn.Module:
        layer = self.layer(dims, self.config.r, self.scaling, self.config.dropout)
        with torch.no_grad():
            a = layer.lora_A.weight
            if self.config.init == "gaussian":
                a.normal_(0.0, 1.0 / self.config.r, generator=generator)
            else:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            layer.lora_B.weight.zero_()
        self.finish(layer, base)
        return layer

    def finish(self, layer: nn.Module, base: nn.Module) -> None:
        """What a variant adds once A and B exist (DoRA: the magnitude)."""

    def peft_config(self) -> dict[str, Any]:
        c = self.config
        return {
            "peft_type": "LORA", "r": c.r, "lora_alpha": c.alpha, "lora_dropout": c.dropout,
            "use_rslora": c.rslora, "init_lora_weights": True if c.init == "default" else c.init,
            **self.peft_fields,
        }  # fmt: skip
