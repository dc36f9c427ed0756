"""Linear decay of the learning rate to ``min_ratio`` over the steps after warm-up (the
schedule of BERT, Devlin et al., 2019, arXiv:1810.04805)."""

from __future__ import annotations

from dataclasses import dataclass

from plugformer.core import hookimpl
from plugformer.core.interfaces.schedule import ScheduleConfig, ScheduleDims, min_ratio_problems


@dataclass
class LinearConfig(ScheduleConfig):
    name: str = "linear"
    min_ratio: float = 0.0  # the final lr as a fraction of train.lr


class Linear:
    """``1 - (1 - min) * progress``."""

    def __init__(self, config: LinearConfig, dims: ScheduleDims) -> None:
        self.config = config

    def check(self) -> list[str]:
        return min_ratio_problems(self.config.min_ratio)

    def __call__(self, progress: float) -> float:
        return 1.0 - (1.0 - self.config.min_ratio) * progress


@hookimpl
def plugformer_register(registry):
    registry.register("schedule", "linear", Linear, LinearConfig)
