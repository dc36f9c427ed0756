"""Temperature scaling of logits (Ackley, Hinton and Sejnowski, 1985; "softmax temperature").

Divides logits by ``temperature``: below 1 sharpens, above 1 flattens. ``temperature=0`` is
greedy decoding (handled by the ``greedy`` sampler), as in vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob


@dataclass
class TemperatureConfig(SamplerConfig):
    name: str = "temperature"
    temperature: float = 1.0


class Temperature:
    """logits / temperature."""

    priority = 20

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def check(self) -> list[str]:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            return [f"temperature must be a finite number >= 0, got {t!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        return logits / self.temperature  # [B, V]


def build(params: Any) -> Temperature | None:
    t = knob(params, "temperature", 1.0)
    return None if t in (0, 1) and not isinstance(t, bool) else Temperature(t)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "temperature", build, TemperatureConfig)
