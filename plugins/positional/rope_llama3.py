"""RoPE with Llama 3.1's frequency scaling (Meta, 2024, "The Llama 3 Herd of Models",
arXiv:2407.21783; the Llama 3.1 reference code).

Wavelengths shorter than ``original_max_position_embeddings / high_freq_factor`` keep their
frequency, those longer than ``original_max_position_embeddings / low_freq_factor`` are divided
by ``factor``, and the ones between are interpolated smoothly. Hugging Face
``rope_type: llama3``; computed in the same steps as transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.model.rotary import Rotary, RotaryConfig, default_inv_freq


@dataclass
class Llama3RoPEConfig(RotaryConfig):
    name: str = "rope_llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


class Llama3RoPE(Rotary):
    """Rotary embedding with Llama 3.1's per-wavelength scaling."""

    def extra_reasons(self) -> list[str]:
        c = self.config
        reasons = []
        if not c.factor > 0:
            reasons.append(f"positional.factor={c.factor} must be positive")
        if not 0 < c.low_freq_factor < c.high_freq_factor:
            reasons.append(
                f"positional.low_freq_factor={c.low_freq_factor} must be positive and below "
                f"high_freq_factor={c.high_freq_factor}"
            )
        if not c.original_max_position_embeddings > 0:
            reasons.append(
                f"positional.original_max_position_embeddings={c.original_max_position_embeddings}"
                " must be positive"
            )
        return reasons

    def frequencies(self) -> torch.Tensor:
        c = self.config
        inv_freq = default_inv_freq(float(c.theta), self.rotary_dim)
        old = c.original_max_position_embeddings
        low_freq_wavelen = old / c.low_freq_factor
        high_freq_wavelen = old / c.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / c.factor, inv_freq)
        smooth = (old / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor)
        smoothed = (1 - smooth) * scaled / c.factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "rope_llama3", Llama3RoPE, Llama3RoPEConfig)
