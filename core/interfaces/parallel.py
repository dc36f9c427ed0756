"""The parallelism-strategy interface: how a model is spread over processes.

The engine calls, in order: ``check()`` (before any weights are read; reasons to refuse),
``setup(device)`` (join the process group; returns the device this rank computes on), then,
after the whole model is built (and quantized, when a quantizer is set),
``parallelize(model, plan)`` and finally ``teardown()`` when the engine is closed.

``plan`` is the model family's tensor-parallel plan: module-path globs (``*`` matches one
dotted component) mapped to a style, ``colwise`` (output features split), ``rowwise`` (input
features split, outputs summed), ``vocab`` (vocabulary split: embedding or head) or
``replicate``. A strategy that does not shard tensors ignores it.

Optional capabilities: :data:`CAPABILITIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability

STYLES = ("colwise", "rowwise", "vocab", "replicate")


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

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (no-op for a single process); returns the device this rank
        computes on (``device``, or ``cuda:<local rank>`` for a CUDA device)."""
        ...

    def parallelize(self, model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
        """Shard or split ``model`` (a :class:`~plugformer.core.model.decoder.Decoder` with its
        weights) for this rank and return the module this rank runs. It is called as
        ``module(ids, positions, cache, valid, last_only=...)`` like the decoder and returns the
        full logits on every rank."""
        ...

    def teardown(self) -> None:
        """Leave the process group."""
        ...


#: Optional capabilities of a parallel strategy (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "attention_heads": Capability(
        None,
        "tuple[int, int] | None: the (query heads, KV heads) each rank's attention kernel "
        "computes when they differ from the model's (tensor parallel); the engine builds the "
        "kernel once, for those counts. Known right after construction (from the spec).",
    ),
    "data_parallel": Capability(
        False,
        "bool: the strategy trains a replicated (or sharded) model on each rank's share of the "
        "batch and averages the gradients over the ranks (ddp, fsdp); the trainer then gives "
        "rank r its slice of every global batch and scales the loss by world_size so the "
        "average is the global batch's mean. Strategies without it are inference-only, apart "
        "from single.",
    ),
}
