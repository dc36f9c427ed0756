"""Warmup-stable-decay (WSD; Hu et al., 2024, "MiniCPM", arXiv:2404.06395): after the
warm-up the learning rate stays at ``train.lr``, then decays over the last
``schedule.decay_fraction`` of the run.

With ``progress`` the fraction of the steps after warm-up done, ``f = decay_fraction`` and
``x = (progress - (1 - f)) / f`` the fraction of the decay done::

    multiplier = 1                                       while progress <= 1 - f
    multiplier = 1 - (1 - min_ratio) * x                 decay=linear
    multiplier = 1 - (1 - min_ratio) * sqrt(x)           decay=sqrt

``decay=sqrt`` is the "1 - sqrt" cool-down of Hägele et al. (2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations", arXiv:2405.18392). The warm-up is
the trainer's (``train.warmup_steps``), as for every schedule; ``decay_fraction=0`` is the
built-in ``constant``, and ``decay_fraction=1`` with ``decay=linear`` the built-in ``linear``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plugformer.core import ScheduleConfig, ScheduleDims, hookimpl

DECAYS = ("linear", "sqrt")


@dataclass
class WSDConfig(ScheduleConfig):
    name: str = "wsd"
    decay_fraction: float = 0.2  # the share of the steps after warm-up spent decaying
    min_ratio: float = 0.0  # the final lr as a fraction of train.lr
    decay: str = "linear"  # linear | sqrt (1 - sqrt, Hägele et al.)


class WSD:
    """1 over the stable part, then down to ``min_ratio`` over the last ``decay_fraction``."""

    def __init__(self, config: WSDConfig, dims: ScheduleDims) -> None:
        self.config = config
        self.dims = dims

    def check(self) -> list[str]:
        c = self.config
        reasons = []
        for key in ("decay_fraction", "min_ratio"):
            value = getattr(c, key)
            if not 0 <= value <= 1:  # NaN too
                reasons.append(f"schedule.{key} must be in [0, 1], got {value!r}")
        if c.decay not in DECAYS:
            reasons.append(f"schedule.decay must be one of {', '.join(DECAYS)}, got {c.decay!r}")
        return reasons

    def __call__(self, progress: float) -> float:
        c = self.config
        start = 1.0 - c.decay_fraction
        if progress <= start:  # also the whole run when decay_fraction = 0
            return 1.0
        x = (progress - start) / c.decay_fraction  # (0, 1]
        if c.decay == "sqrt":
            x = math.sqrt(x)
        return 1.0 - (1.0 - c.min_ratio) * x


@hookimpl
def plugformer_register(registry):
    registry.register("schedule", "wsd", WSD, WSDConfig)
