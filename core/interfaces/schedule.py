"""The learning-rate schedule interface (``schedule=cosine``): a multiplier of ``train.lr`` per
optimizer step, with ``train.warmup_steps`` of linear warm-up handled by the trainer.

The builder gets its config and the run's length; the object maps the step number after
warm-up to a multiplier in [0, 1]. The trainer applies ``lr * warmup(step) * schedule(...)``
through ``torch.optim.lr_scheduler.LambdaLR``, so a resumed run continues at the same point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class ScheduleConfig:
    """Base config of every schedule plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class ScheduleDims:
    """The run a schedule is built for."""

    total_steps: int  # optimizer steps in the run (train.steps)
    warmup_steps: int  # the first steps of linear warm-up (train.warmup_steps)


@runtime_checkable
class Schedule(Protocol):
    """Built by ``builder(config: ScheduleConfig, dims: ScheduleDims)``."""

    def check(self) -> list[str]:
        """Reasons this schedule cannot run (empty when it can)."""
        ...

    def __call__(self, progress: float) -> float:
        """The multiplier at ``progress`` in [0, 1]: the fraction of the steps after warm-up
        done (0 right after warm-up, 1 at the last step)."""
        ...


def lr_multiplier(schedule: Schedule, dims: ScheduleDims, step: int) -> float:
    """The multiplier of optimizer step ``step`` (0-based): linear warm-up from 1/(warmup+1)
    to 1 over the warm-up steps, then the schedule over the rest."""
    if step < dims.warmup_steps:
        return (step + 1) / (dims.warmup_steps + 1)
    rest = max(dims.total_steps - dims.warmup_steps - 1, 1)
    return float(schedule(min((step - dims.warmup_steps) / rest, 1.0)))


def min_ratio_problems(ratio: float) -> list[str]:
    """Why ``schedule.min_ratio`` (the final lr as a fraction of ``train.lr``) is invalid."""
    return [] if 0 <= ratio <= 1 else [f"schedule.min_ratio must be in [0, 1], got {ratio}"]
