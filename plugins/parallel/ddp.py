"""Data parallelism for training (``torch.nn.parallel.DistributedDataParallel``; Li et al.,
2020, "PyTorch Distributed", arXiv:2006.15704): every rank holds the whole model, trains on its
share of each global batch, and the gradients are averaged over the ranks in backward.

Launch: ``torchrun --nproc-per-node N -m plugformer train parallel=ddp parallel.size=N ...``
(multi-node: ``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m plugformer train ...`` on every node). ``train.batch_size`` stays
the global batch, so the result does not depend on N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from plugformer.core import hookimpl
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.parallel.distributed import DistributedConfig, GroupMember, world_problems


@dataclass
class DDPConfig(ParallelConfig, DistributedConfig):
    name: str = "ddp"
    size: int = 2  # ranks (processes); must equal the launcher's WORLD_SIZE


class DDP(GroupMember):
    """Replicated model, sharded batch, gradients averaged by DistributedDataParallel."""

    data_parallel = True  # the trainer feeds each rank 1/size of the batch

    def __init__(self, config: DDPConfig, spec: ModelSpec) -> None:
        self.config = config
        self._start()
        self.world_size = config.size

    def check(self) -> list[str]:
        return world_problems("ddp", "size", self.config.size) + self._group_problems()

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        if self.config.size == 1:
            return model
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "ddp", DDP, DDPConfig)
