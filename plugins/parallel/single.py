"""Single-process execution: no parallelism, the whole model in one process."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.parallel.distributed import launch_env


@dataclass
class SingleConfig(ParallelConfig):
    name: str = "single"


class Single:
    """Runs the model as it is, on one process."""

    rank = 0
    world_size = 1

    def __init__(self, config: SingleConfig, spec: ModelSpec) -> None:
        self.config = config

    def check(self) -> list[str]:
        env = launch_env()
        if env is not None and env.world_size > 1:
            return [
                f"launched with WORLD_SIZE={env.world_size} but parallel=single runs one "
                "process; choose a parallel strategy such as parallel=tensor"
            ]
        return []

    def setup(self, device: torch.device) -> torch.device:
        return device

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        return model

    def teardown(self) -> None:
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "single", Single, SingleConfig)
