"""Fully sharded data parallelism for training (FSDP2's ``fully_shard``; Zhao et al., 2023,
"PyTorch FSDP", arXiv:2304.11277): each rank holds 1/N of every block's parameters, gradients
and optimizer state, gathers a block's weights just before using them, and reduce-scatters
its gradients; the batch is sharded over the ranks as with ``ddp``.

Launch: ``torchrun --nproc-per-node N -m plugformer train parallel=fsdp parallel.size=N ...``
(gloo on the CPU, NCCL on CUDA). Checkpoints are gathered whole, so a run of N ranks resumes
on M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.fsdp import fully_shard

from plugformer.core import hookimpl
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.parallel.distributed import DistributedConfig, GroupMember, world_problems


@dataclass
class FSDPConfig(ParallelConfig, DistributedConfig):
    name: str = "fsdp"
    size: int = 2  # ranks (processes); must equal the launcher's WORLD_SIZE
    reshard_after_forward: bool = True  # free gathered weights after forward (less memory)


class FSDP(GroupMember):
    """Every decoder block sharded on its own, the rest (embedding, final norm, head) at the
    root: one block's weights are whole at a time."""

    data_parallel = True  # the trainer feeds each rank 1/size of the batch

    def __init__(self, config: FSDPConfig, spec: ModelSpec) -> None:
        self.config = config
        self._start()
        self.world_size = config.size

    def check(self) -> list[str]:
        return world_problems("fsdp", "size", self.config.size) + self._group_problems()

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        if self.config.size == 1:
            return model
        reshard = self.config.reshard_after_forward
        for block in getattr(model, "layers", []):
            fully_shard(block, reshard_after_forward=reshard)
        fully_shard(model, reshard_after_forward=reshard)
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "fsdp", FSDP, FSDPConfig)
