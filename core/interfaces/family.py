"""The model-family interface: maps a Hugging Face ``config.json`` and tensor names onto the
generic decoder.

Optional capabilities: :data:`CAPABILITIES` (``tensor_parts`` for fused or re-laid-out tensors).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from plugformer.core.interfaces.capability import Capability
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

    def tensor_name(self, hf_name: str, spec: ModelSpec, hf_config: dict[str, Any]) -> str | None:
        """Our parameter name for the checkpoint tensor ``hf_name`` (see the naming scheme in
        :mod:`plugformer.core.interfaces.spec`), given the spec this family made and the
        checkpoint's HF config. ``None`` means the model deliberately does not use the tensor
        (a cached rotary table, a stored causal mask): it is skipped. Every other name that
        is not one of the decoder's fails the load, listed as unexpected, so return a name
        you do not know unchanged rather than None (contract 1.x's one-argument
        ``tensor_name(hf_name)`` is still called, with a DeprecationWarning)."""
        ...

    def tp_plan(self) -> dict[str, str]:
        """Tensor-parallel plan: module-path glob -> ``colwise`` | ``rowwise`` | ``vocab``."""
        ...


#: Optional capabilities of a model family (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "tensor_parts": Capability(
        None,
        "method (hf_name, spec) -> list[TensorPart] | None: for a checkpoint tensor that is not "
        "one of the decoder's as it stands (fused q/k/v or gate/up projections, GPT-2's "
        "transposed Conv1D weights), the tensors it holds, each as (our name, take) where take "
        "cuts ours out of the checkpoint tensor (slicing, view, t()); None means use "
        "tensor_name. The loader runs every take on a meta tensor first, so shapes are checked "
        "before any data is read, and reads each checkpoint tensor once.",
    ),
}


def map_tensor_name(
    family: Any, hf_name: str, spec: ModelSpec, hf_config: dict[str, Any]
) -> str | None:
    """``family.tensor_name(hf_name, spec, hf_config)``; a contract 1.x family's
    ``tensor_name(hf_name)`` is called with the name alone, with a DeprecationWarning."""
    method = family.tensor_name
    if _takes_one_argument(method):
        warnings.warn(
            f"{type(family).__name__}.tensor_name(hf_name) is the contract 1.x signature; "
            "2.0 passes (hf_name, spec, hf_config)",
            DeprecationWarning,
            stacklevel=2,
        )
        result: str | None = method(hf_name)
        return result
    result = method(hf_name, spec, hf_config)
    return result


def _takes_one_argument(method: Any) -> bool:
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 1
