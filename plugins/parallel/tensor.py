"""Tensor parallelism: every layer's weights split over ``parallel.size`` processes, Megatron
style (Shoeybi et al., 2019, arXiv:1909.08053), following the model family's plan
(:mod:`plugformer.core.parallel.tensor`). Every rank runs the same generation loop on the same
inputs and gets the full logits, so they sample the same tokens.

Launch: ``torchrun --nproc-per-node N -m plugformer generate parallel=tensor parallel.size=N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.parallel.distributed import DistributedConfig, GroupMember, world_problems
from plugformer.core.parallel.tensor import local_heads, shard_model, spec_problems


@dataclass
class TensorConfig(ParallelConfig, DistributedConfig):
    name: str = "tensor"
    size: int = 2  # ranks (processes); must equal the launcher's WORLD_SIZE


class TensorParallel(GroupMember):
    """Each rank holds 1/size of every attention and MLP layer and of the vocabulary."""

    def __init__(self, config: TensorConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec
        self._start()
        self.world_size = config.size

    def check(self) -> list[str]:
        c = self.config
        problems = world_problems("tensor", "size", c.size)
        if not isinstance(c.size, bool) and isinstance(c.size, int) and c.size > 0:
            problems = spec_problems(self.spec, c.size) + problems  # the model's counts first
        return problems + self._group_problems()

    @property
    def attention_heads(self) -> tuple[int, int] | None:
        if self.config.size == 1:
            return None
        return local_heads(self.spec, self.config.size)

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        if self.config.size == 1:
            return model
        return shard_model(model, plan, self.spec, self.rank, self.config.size)


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "tensor", TensorParallel, TensorConfig)
