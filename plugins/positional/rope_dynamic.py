"""RoPE with dynamic NTK-aware scaling (bloc97 and emozilla, 2023, "Dynamically Scaled RoPE";
Peng et al., 2023, "YaRN", arXiv:2309.00071, section 3.3).

While a forward pass stays within ``max_position_embeddings`` positions, this is plain RoPE.
Beyond, the base grows with the length ``L`` reached (the largest position + 1):
``theta * (factor * L / max_position_embeddings - (factor - 1)) ^ (d / (d - 2))``.
Hugging Face ``rope_type: dynamic``; computed in the same float32 steps as transformers.

Keys already in a KV cache keep the frequencies they were rotated with, as in transformers.
transformers keeps the grown base until a pass falls back within the trained length; this
plugin recomputes it from each pass's own positions. Generation only grows, so the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.model.rotary import Rotary, RotaryConfig, default_inv_freq


@dataclass
class DynamicRoPEConfig(RotaryConfig):
    name: str = "rope_dynamic"
    factor: float = 1.0
    max_position_embeddings: int = 2048  # the trained context length


class DynamicRoPE(Rotary):
    """Rotary embedding whose base grows with the context length beyond the trained one."""

    def extra_reasons(self) -> list[str]:
        reasons = []
        if not self.config.factor > 0:
            reasons.append(f"positional.factor={self.config.factor} must be positive")
        if not self.config.max_position_embeddings > 0:
            reasons.append(
                f"positional.max_position_embeddings={self.config.max_position_embeddings} "
                "must be positive"
            )
        if self.rotary_dim <= 2:
            reasons.append(f"rope_dynamic needs rotary_dim > 2, got {self.rotary_dim}")
        return reasons

    def frequencies(self) -> torch.Tensor:
        # within the trained length: the formula at L = max_position_embeddings, in Python floats
        c, dim = self.config, self.rotary_dim
        length = c.max_position_embeddings
        base = c.theta * ((c.factor * length / length) - (c.factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim)

    def inv_freq_for(self, positions: torch.Tensor) -> torch.Tensor:
        c, dim = self.config, self.rotary_dim
        length = positions.max() + 1  # an int64 tensor, as in transformers
        if int(length) <= c.max_position_embeddings:
            return self.inv_freq
        length = torch.maximum(length, torch.tensor(c.max_position_embeddings, dtype=length.dtype))
        base = c.theta * ((c.factor * length / c.max_position_embeddings) - (c.factor - 1)) ** (
            dim / (dim - 2)
        )
        return default_inv_freq(base.to(torch.float32), dim)


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "rope_dynamic", DynamicRoPE, DynamicRoPEConfig)
