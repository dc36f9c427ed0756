"""The checkpoint-format interface: reads a model's files (HF safetensors, GGUF ...)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.tokenizer import Tokenizer


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

    def detect(self, path: Path) -> bool:
        """Whether ``path`` (a file or a directory) is in this format; must not read much."""
        ...

    def open(self, path: Path) -> Checkpoint:
        """Open ``path``; raises a typed error for anything malformed."""
        ...
