"""A constant learning rate after warm-up."""

from __future__ import annotations

from dataclasses import dataclass

from plugformer.core import hookimpl
from plugformer.core.interfaces.schedule import ScheduleConfig, ScheduleDims


@dataclass
class ConstantConfig(ScheduleConfig):
    name: str = "constant"


class Constant:
    """Multiplier 1 at every step after warm-up."""

    def __init__(self, config: ConstantConfig, dims: ScheduleDims) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []

    def __call__(self, progress: float) -> float:
        return 1.0


@hookimpl
def plugformer_register(registry):
    registry.register("schedule", "constant", Constant, ConstantConfig)
