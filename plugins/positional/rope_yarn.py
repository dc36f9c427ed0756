"""RoPE with YaRN scaling (Peng et al., 2023, "YaRN: Efficient Context Window Extension of
Large Language Models", arXiv:2309.00071).

Per frequency, a linear ramp between ``beta_fast`` and ``beta_slow`` rotations over the trained
context blends extrapolation (high frequencies, unchanged) with interpolation (low frequencies,
divided by ``factor``); cos and sin are multiplied by the attention factor
``0.1 * ln(factor) + 1`` (or ``attention_factor``, or the ``mscale`` / ``mscale_all_dim`` ratio
of DeepSeek). Hugging Face ``rope_type: yarn``; computed in the same steps as transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.positional import PositionalDims
from plugformer.core.model.rotary import Rotary, RotaryConfig


@dataclass
class YaRNConfig(RotaryConfig):
    name: str = "rope_yarn"
    factor: float = 1.0
    original_max_position_embeddings: int = 2048  # the context length trained before YaRN
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None  # None: from factor (and mscale, mscale_all_dim)
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True  # round the ramp's ends to whole dimensions


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class YaRN(Rotary):
    """Rotary embedding with YaRN's blended frequencies and attention factor."""

    def __init__(self, config: YaRNConfig, dims: PositionalDims) -> None:
        super().__init__(config, dims)
        c = config
        if c.attention_factor is not None:
            self.attention_factor = float(c.attention_factor)
        elif c.mscale and c.mscale_all_dim and c.factor > 0:
            self.attention_factor = _mscale(c.factor, c.mscale) / _mscale(
                c.factor, c.mscale_all_dim
            )
        elif c.factor > 0:
            self.attention_factor = _mscale(c.factor)

    def extra_reasons(self) -> list[str]:
        c = self.config
        reasons = []
        if not c.factor > 0:
            reasons.append(f"positional.factor={c.factor} must be positive")
        if not c.original_max_position_embeddings > 0:
            reasons.append(
                f"positional.original_max_position_embeddings={c.original_max_position_embeddings}"
                " must be positive"
            )
        if not c.beta_fast > 0 or not c.beta_slow > 0:
            reasons.append(
                f"positional.beta_fast={c.beta_fast} and beta_slow={c.beta_slow} must be positive"
            )
        return reasons

    def frequencies(self) -> torch.Tensor:
        c, dim, base = self.config, self.rotary_dim, float(self.config.theta)

        def correction_dim(rotations: float) -> float:
            # the dimension whose wavelength fits `rotations` times into the trained context
            return (
                dim * math.log(c.original_max_position_embeddings / (rotations * 2 * math.pi))
            ) / (2 * math.log(base))

        low, high = correction_dim(c.beta_fast), correction_dim(c.beta_slow)
        if c.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # as transformers: no division by zero
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
        extrapolation = 1.0 / pos_freqs
        interpolation = 1.0 / (c.factor * pos_freqs)
        keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate
        return interpolation * (1 - keep) + extrapolation * keep


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "rope_yarn", YaRN, YaRNConfig)
