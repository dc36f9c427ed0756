"""Tensor parallelism: every layer's weights split over ``parallel.size`` processes, Megatron
style (Shoeybi et al., 2019, arXiv:1909.08053), following the model family's plan
(:mod:`plugformer.core.tensor_parallel`). Every rank runs the same generation loop on the same
inputs and gets the full logits, so they sample the same tokens.

Launch: ``torchrun --nproc-per-node N -m plugformer generate parallel=tensor parallel.size=N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from plugformer.core import hookimpl
from plugformer.core.distributed import backend_problems, join, launch_env, leave, world_problems
from plugformer.core.model.spec import ModelSpec
from plugformer.core.parallel import ParallelConfig
from plugformer.core.tensor_parallel import local_heads, shard_model, spec_problems


@dataclass
class TensorConfig(ParallelConfig):
    name: str = "tensor"
    size: int = 2  # ranks (processes); must equal the launcher's WORLD_SIZE
    backend: str = "auto"  # auto (nccl for CUDA, else gloo) | gloo | nccl
    timeout_s: float = 300.0  # a collective waiting longer fails (e.g. a rank died)


class TensorParallel:
    """Each rank holds 1/size of every attention and MLP layer and of the vocabulary."""

    def __init__(self, config: TensorConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec
        env = launch_env()
        self.rank = env.rank if env else 0
        self.world_size = config.size

    def check(self) -> list[str]:
        c = self.config
        problems = world_problems("tensor", "size", c.size)
        if not isinstance(c.size, bool) and isinstance(c.size, int) and c.size > 0:
            problems = spec_problems(self.spec, c.size) + problems  # the model's counts first
        return problems + backend_problems(c.backend, c.timeout_s)

    @property
    def attention_heads(self) -> tuple[int, int] | None:
        if self.config.size == 1:
            return None
        return local_heads(self.spec, self.config.size)

    def setup(self, device: torch.device) -> torch.device:
        device = join(device, self.config.backend, self.config.timeout_s)
        self.rank = dist.get_rank()
        return device

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        if self.config.size == 1:
            return model
        return shard_model(model, plan, self.spec, self.rank, self.config.size)

    def teardown(self) -> None:
        leave()


@hookimpl
def plugformer_register(registry):
    registry.register("parallel", "tensor", TensorParallel, TensorConfig)
