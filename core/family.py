"""The model-family interface: maps a Hugging Face ``config.json`` and tensor names onto the
generic decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from plugformer.core.model.spec import ModelSpec


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
