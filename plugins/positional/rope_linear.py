"""RoPE with linear position interpolation (Chen et al., 2023, "Extending Context Window of
Large Language Models via Positional Interpolation", arXiv:2306.15595; kaiokendev).

Positions are divided by ``factor`` (the same as dividing the inverse frequencies), squeezing a
``factor`` times longer context into the trained range. Hugging Face ``rope_type: linear``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.model.rotary import Rotary, RotaryConfig, default_inv_freq


@dataclass
class LinearRoPEConfig(RotaryConfig):
    name: str = "rope_linear"
    factor: float = 1.0


class LinearRoPE(Rotary):
    """Rotary embedding with positions scaled by ``1 / factor``."""

    def extra_reasons(self) -> list[str]:
        if not self.config.factor > 0:
            return [f"positional.factor={self.config.factor} must be positive"]
        return []

    def frequencies(self) -> torch.Tensor:
        return default_inv_freq(float(self.config.theta), self.rotary_dim) / self.config.factor


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "rope_linear", LinearRoPE, LinearRoPEConfig)
