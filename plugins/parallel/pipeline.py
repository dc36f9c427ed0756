"""Pipeline parallelism: the decoder's layers split into ``parallel.stages`` contiguous stages,
one per process, hidden states passed on with point-to-point messages and a batch run as
micro-batches so that the stages work at the same time (:mod:`plugformer.core.pipeline_parallel`).

The default split balances the weights each stage reads per token (the head counts for the
last stage); ``parallel.split=[10,20]`` sets the layers per stage.

Launch: ``torchrun --nproc-per-node N -m plugformer generate parallel=pipeline parallel.stages=N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from plugformer.core import hookimpl
from plugformer.core.distributed import backend_problems, join, launch_env, leave, world_problems
from plugformer.core.model.spec import ModelSpec
from plugformer.core.parallel import ParallelConfig
from plugformer.core.pipeline_parallel import make_stage, split_problems


@dataclass
class PipelineConfig(ParallelConfig):
    name: str = "pipeline"
    stages: int = 2  # ranks (processes); must equal the launcher's WORLD_SIZE
    split: list[int] | None = None  # layers per stage; None: balanced by weights per token
    micro_batches: int = 0  # a batch's rows run in this many groups; 0: one per stage
    backend: str = "auto"  # auto (nccl for CUDA, else gloo) | gloo | nccl
    timeout_s: float = 300.0  # a message waiting longer fails (e.g. a rank died)


class PipelineParallel:
    """Each rank holds a contiguous run of layers (stage 0 the embedding, the last the head)."""

    def __init__(self, config: PipelineConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec
        env = launch_env()
        self.rank = env.rank if env else 0
        self.world_size = config.stages

    def check(self) -> list[str]:
        c = self.config
        problems = split_problems(self.spec.num_layers, c.stages, c.split)
        mb = c.micro_batches
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 0:
            problems.append(f"parallel.micro_batches={mb!r} must be 0 (auto) or a positive integer")
        if not split_problems(self.spec.num_layers, c.stages, None):  # a usable count
            problems += world_problems("pipeline", "stages", c.stages)
        return problems + backend_problems(c.backend, c.timeout_s)

    def setup(self, device: torch.device) -> torch.device:
        device = join(device, self.config.backend, self.config.timeout_s)
        self.rank = dist.get_rank()
        return device

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        c = self.config
        split = list(c.split) if c.split is not None else None
        return make_stage(model, self.rank, c.stages, split, c.micro_batches)

    def teardown(self) -> None:
        leave()


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "pipeline", PipelineParallel, PipelineConfig)
