"""Pipeline parallelism: the decoder's layers split into ``parallel.stages`` contiguous stages,
one per process, hidden states passed on with point-to-point messages and a batch run as
micro-batches so that the stages work at the same time (:mod:`plugformer.core.parallel.pipeline`).

The default split balances the weights each stage reads per token (the head counts for the
last stage); ``parallel.split=[10,20]`` sets the layers per stage.

Launch: ``torchrun --nproc-per-node N -m plugformer generate parallel=pipeline parallel.stages=N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.parallel.distributed import DistributedConfig, GroupMember, world_problems
from plugformer.core.parallel.pipeline import make_stage, split_problems


@dataclass
class PipelineConfig(ParallelConfig, DistributedConfig):
    name: str = "pipeline"
    stages: int = 2  # ranks (processes); must equal the launcher's WORLD_SIZE
    split: list[int] | None = None  # layers per stage; None: balanced by weights per token
    micro_batches: int = 0  # a batch's rows run in this many groups; 0: one per stage


class PipelineParallel(GroupMember):
    """Each rank holds a contiguous run of layers (stage 0 the embedding, the last the head)."""

    def __init__(self, config: PipelineConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec
        self._start()
        self.world_size = config.stages

    def check(self) -> list[str]:
        c = self.config
        problems = split_problems(self.spec.num_layers, c.stages, c.split)
        mb = c.micro_batches
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 0:
            problems.append(f"parallel.micro_batches={mb!r} must be 0 (auto) or a positive integer")
        if not split_problems(self.spec.num_layers, c.stages, None):  # a usable count
            problems += world_problems("pipeline", "stages", c.stages)
        return problems + self._group_problems()

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        c = self.config
        split = list(c.split) if c.split is not None else None
        return make_stage(model, self.rank, c.stages, split, c.micro_batches)


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "pipeline", PipelineParallel, PipelineConfig)
