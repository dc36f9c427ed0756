"""The model-family interface: maps a Hugging Face ``config.json`` and tensor names onto the
generic decoder.

A family may also implement ``tensor_parts(hf_name, spec) -> list[TensorPart] | None``
(optional, looked up with ``getattr``; contract 1.1): for a checkpoint tensor that is not one
of the decoder's as it stands -- fused q/k/v or gate/up projections, GPT-2's transposed Conv1D
weights -- the tensors it holds, each as ``(our name, take)`` where ``take`` cuts ours out of the
checkpoint tensor (slicing, ``view``, ``t()``). ``None`` means "use ``tensor_name``". The loader
runs every ``take`` on a meta tensor first, so shapes are checked before any data is read, and
reads each checkpoint tensor once however many parts it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.spec import ModelSpec

#: One of our tensors inside a checkpoint tensor: (our parameter name, checkpoint tensor -> ours).
TensorPart = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def expect_shape(t: torch.Tensor, *dims: int | None) -> torch.Tensor:
    """``t`` itself, once its leading dimensions are ``dims`` (None: any size). For ``take``
    functions that slice: a fused tensor larger than the config says must not be cut silently;
    the ValueError is reported by the loader as that tensor's shape problem."""
    got = tuple(t.shape[: len(dims)])
    if len(got) < len(dims) or any(
        d is not None and d != g for d, g in zip(dims, got, strict=False)
    ):
        raise ValueError(f"expected leading dimensions {list(dims)}, got {list(t.shape)}")
    return t


class FamilyBase:
    """What most family plugins share: they keep their config and never refuse by themselves
    (their checkpoint's config is checked in ``spec_from_hf``). Subclass it and add
    ``architectures``, ``model_types``, ``spec_from_hf``, ``tensor_name`` and ``tp_plan``."""

    def __init__(self, config: FamilyConfig) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []


@dataclass
class FamilyConfig:
    """Base config of every model family; ``name`` is its registry name (e.g. ``llama``)."""

    name: str = ""


@runtime_checkable
class ModelFamily(Protocol):
    """Built by ``builder(config: FamilyConfig)``."""

    architectures: tuple[str, ...]  # HF ``architectures`` values this family reads
    model_types: tuple[str, ...]  # HF ``model_type`` values this family reads

    def check(self) -> list[str]:
        """Reasons this family cannot be used at all here (empty when it can)."""
        ...

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        """The decoder spec for a HF config; raises ConfigError naming a bad key and value."""
        ...

    def tensor_name(self, hf_name: str) -> str | None:
        """Our parameter name for a HF tensor name (None: the tensor is not used)."""
        ...

    def tp_plan(self) -> dict[str, str]:
        """Tensor-parallel plan: module-path glob -> ``colwise`` | ``rowwise`` | ``vocab``."""
        ...
