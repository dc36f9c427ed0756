"""One process with its own intra-op thread count: the smallest parallel strategy worth
writing (no paper; PyTorch's ``torch.set_num_threads``).

It runs the model whole, like the built-in ``single``, and sets the number of threads PyTorch
uses inside each operator for as long as the engine is open: ``setup`` sets it, ``teardown``
(``engine.close()``) puts back what it found. The tensor-parallel plan it receives in
``parallelize`` is ignored, since nothing is cut. ``check`` refuses a launch with several
processes (``torchrun``), which this strategy would run as copies of one another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from plugformer.core import ModelSpec, ParallelConfig, hookimpl
from plugformer.core.parallel.distributed import launch_env


@dataclass
class ThreadsConfig(ParallelConfig):
    name: str = "threads"
    threads: int = 1  # intra-op threads while the engine is open


class Threads:
    """The whole model in one process, on ``parallel.threads`` threads."""

    rank = 0
    world_size = 1

    def __init__(self, config: ThreadsConfig, spec: ModelSpec) -> None:
        self.config = config
        self.previous: int | None = None

    def check(self) -> list[str]:
        reasons = []
        n = self.config.threads
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= (os.cpu_count() or 1):
            reasons.append(f"parallel.threads must be in [1, {os.cpu_count()}], got {n!r}")
        env = launch_env()
        if env is not None and env.world_size > 1:
            reasons.append(
                f"launched with WORLD_SIZE={env.world_size}, but parallel=threads runs one process"
            )
        return reasons

    def setup(self, device: torch.device) -> torch.device:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        return device

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        return model

    def teardown(self) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)
            self.previous = None


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "threads", Threads, ThreadsConfig)
