"""Cosine decay of the learning rate (Loshchilov and Hutter, 2017, "SGDR", arXiv:1608.03983,
without restarts): from 1 to ``min_ratio`` over the steps after warm-up."""

from __future__ import annotations

import math
from dataclasses import dataclass

from plugformer.core import hookimpl
from plugformer.core.interfaces.schedule import ScheduleConfig, ScheduleDims, min_ratio_problems


@dataclass
class CosineConfig(ScheduleConfig):
    name: str = "cosine"
    min_ratio: float = 0.0  # the final lr as a fraction of train.lr


class Cosine:
    """``min + (1 - min) * (1 + cos(pi * progress)) / 2``."""

    def __init__(self, config: CosineConfig, dims: ScheduleDims) -> None:
        self.config = config

    def check(self) -> list[str]:
        return min_ratio_problems(self.config.min_ratio)

    def __call__(self, progress: float) -> float:
        r = self.config.min_ratio
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress))


@hookimpl
def plugformer_register(registry):
    registry.register("schedule", "cosine", Cosine, CosineConfig)
