"""The checkpoint-format interface: reads a model's files (HF safetensors, GGUF ...).

An opened :class:`Checkpoint` may offer the optional capabilities of :data:`CAPABILITIES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability
from plugformer.core.interfaces.tokenizer import Tokenizer

#: ``CheckpointFormat.detect`` confidences: a layout several formats share, and one only this
#: format has (``True`` counts as :data:`SPECIFIC`, ``False`` as 0).
GENERIC = 0.5
SPECIFIC = 1.0


@dataclass
class CheckpointConfig:
    """Base config of every checkpoint format; ``name`` is its registry name."""

    name: str = ""


@runtime_checkable
class Checkpoint(Protocol):
    """An opened checkpoint: metadata first, tensors on demand.

    Whatever the file format, a checkpoint speaks Hugging Face: ``hf_config`` has the keys of
    a ``config.json`` (``architectures``, ``model_type``, ``hidden_size`` ...) and tensor names
    are the HF ``transformers`` names (``model.layers.0.self_attn.q_proj.weight``), laid out
    as transformers holds them, so a model family only ever maps HF onto the decoder.
    """

    hf_config: dict[str, Any]  # config.json, or its equivalent from the file's metadata
    generation_config: dict[str, Any]  # generation_config.json (or {}): eos_token_id ...

    def tensor_names(self) -> Iterator[str]:
        """Names of every tensor in the checkpoint, without reading their data."""
        ...

    def tensor_info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of one tensor, without reading its data."""
        ...

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, memory-mapped where the format allows."""
        ...

    def tokenizer(self) -> Tokenizer | None:
        """The model's own tokenizer (with its chat template), or None when it has none."""
        ...

    def close(self) -> None:
        """Release file handles and memory maps (tensors already returned stay valid)."""
        ...


@runtime_checkable
class CheckpointFormat(Protocol):
    """Built by ``builder(config: CheckpointConfig)``."""

    def check(self) -> list[str]:
        """Reasons this format cannot be read here (a missing optional package ...)."""
        ...

    def detect(self, path: Path) -> float:
        """How sure this format is that ``path`` (a file or a directory) is in it, without
        reading much: 0 (or False) no; :data:`GENERIC` for a layout several formats share (a
        Hugging Face directory with ``config.json``); :data:`SPECIFIC` (or True) for a layout
        only this format has (a magic number, its own index or config key). The highest claim
        wins; two formats claiming a path equally are refused, naming both."""
        ...

    def open(self, path: Path) -> Checkpoint:
        """Open ``path``; raises a typed error for anything malformed."""
        ...


#: Optional capabilities of an opened checkpoint (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "tensor_as": Capability(
        None,
        "method (name, dtype) -> Tensor: the tensor read straight into dtype (a GGUF quantized "
        "tensor dequantized into bfloat16 without a float32 copy).",
    ),
    "drop_pages": Capability(
        None,
        "method () -> None: drop the memory-mapped pages already copied out (the loader calls it "
        "after each tensor, so resident memory stays near one copy of the weights).",
    ),
    "quantized_type": Capability(
        None,
        "method (name) -> str | None: the block type (Q4_0, Q4_1, Q8_0) of a tensor the format "
        "can hand out undequantized, else None; with quantized_blocks(name) -> uint8 blocks, "
        "quant=none runs those tensors quantized.",
    ),
}
