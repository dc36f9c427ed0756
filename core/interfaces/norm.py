"""The norm interface: the normalisation layers of a decoder (RMSNorm, LayerNorm ...).

The model names its norm in its spec (``spec.norm`` and ``spec.norm_args``); the decoder builds
one for each place that needs one (before attention, before the MLP, after the embedding, at
the end). A norm owns its weights, loaded by name (``layers.0.attn_norm.weight``).

Optional capabilities: :data:`CAPABILITIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability


@dataclass
class NormConfig:
    """Base config of every norm plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class NormDims:
    """What a norm is built for (from the model spec)."""

    dim: int  # the normalised feature dimension
    eps: float  # added to the variance (spec.norm_eps)


@runtime_checkable
class Norm(Protocol):
    """Built by ``builder(config: NormConfig, dims: NormDims)``; a ``torch.nn.Module``."""

    def check(self) -> list[str]:
        """Reasons this norm cannot be built with its dims (empty when it can)."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim], same dtype."""
        ...


#: Optional capabilities of a norm module (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "plain_rms": Capability(
        False,
        "bool: the forward is exactly weight * (x * rsqrt(mean(x^2, -1) + eps)) with attributes "
        "weight and eps, so float32 CPU decode steps may normalise through the engine's fused "
        "step (core/model/decode_step.py) instead of calling the module.",
    ),
    "unit_offset": Capability(
        False,
        "bool: the weight stores scale - 1 (Gemma's RMSNorm); random initialisation (model=tiny) "
        "then centres it on 0 instead of 1.",
    ),
}
