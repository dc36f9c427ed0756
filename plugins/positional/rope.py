"""Rotary position embedding (Su et al., 2021, "RoFormer", arXiv:2104.09864).

Rotates pairs of query/key features by position-dependent angles ``pos * theta^(-2i/d)``.
``rotary_dim`` rotates only the first features of each head (partial rotary, as in GPT-NeoX);
``interleaved`` pairs neighbouring features (GPT-J) instead of the two halves (Llama, NeoX).
The scaled variants for long contexts are their own plugins: ``rope_linear``, ``rope_dynamic``,
``rope_yarn`` and ``rope_llama3``.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugformer.core import hookimpl
from plugformer.core.model.rotary import Rotary, RotaryConfig


@dataclass
class RoPEConfig(RotaryConfig):
    name: str = "rope"


class RoPE(Rotary):
    """Rotary position embedding applied to q and k."""


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "rope", RoPE, RoPEConfig)
