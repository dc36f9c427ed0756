"""The parallelism-strategy interface: how a model is spread over processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class ParallelConfig:
    """Base config of every parallel strategy; ``name`` is its registry name."""

    name: str = ""


@runtime_checkable
class ParallelStrategy(Protocol):
    """Built by ``builder(config: ParallelConfig, spec: ModelSpec)``."""

    rank: int
    world_size: int

    def check(self) -> list[str]:
        """Reasons the model cannot be spread this way (before any weights load)."""
        ...

    def setup(self) -> None:
        """Join the process group (no-op for a single process)."""
        ...

    def parallelize(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard or split ``model`` for this rank and return the module this rank runs."""
        ...

    def teardown(self) -> None:
        """Leave the process group."""
        ...
