"""The MLP interface: the feed-forward part of a decoder block (dense or mixture-of-experts).

An MLP plugin owns its weights (they are loaded by name, e.g. ``layers.0.mlp.up.weight``), so
unlike attention, swapping the MLP of a checkpoint changes which tensors it needs. The model
names its MLP in its spec (``spec.mlp`` and ``spec.mlp_args``); the decoder builds one per layer.
Optional capabilities: :data:`CAPABILITIES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from plugformer.core.interfaces.capability import Capability


@dataclass
class MLPConfig:
    """Base config of every MLP plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class MLPDims:
    """What an MLP is built for (from the model spec)."""

    hidden_size: int
    intermediate_size: int  # per expert for mixtures of experts
    activation: str  # a name of :data:`ACTIVATIONS`
    bias: bool  # biases on the linear layers


@runtime_checkable
class MLP(Protocol):
    """Built by ``builder(config: MLPConfig, dims: MLPDims)``; a ``torch.nn.Module``."""

    def check(self) -> list[str]:
        """Reasons this MLP cannot be built with its dims (empty when it can)."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, S, hidden] -> [B, S, hidden]."""
        ...


#: Optional capabilities of an MLP module (read with :func:`capability`).
CAPABILITIES: dict[str, Capability] = {
    "fuse_projections": Capability(
        None,
        "method () -> bool: join the layers that read the same input (gate and up) into one "
        "(plugformer.core.model.fuse.concat_linears) and say whether it did; called for "
        "fuse_projections=true after quantization and parallelism.",
    ),
}


def _gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's "gelu_new", spelled out as its reference code does (not fused like F.gelu)
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


def _gelu_bloom(x: torch.Tensor) -> torch.Tensor:
    # BLOOM's Megatron-DeepSpeed tanh approximation, with its rounded constant
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


#: Activation functions by name. ``gelu`` is exact (erf); ``gelu_tanh`` is PyTorch's fused tanh
#: approximation (Gemma's ``gelu_pytorch_tanh``); ``gelu_new`` and ``gelu_bloom`` are the same
#: approximation written out as GPT-2 and BLOOM compute it (they differ from the fused one in the
#: last bits, so each family gets exactly its own).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": _gelu_tanh_formula,
    "gelu_bloom": _gelu_bloom,
    "relu": F.relu,
}


#: in-place variants (the same values) for inference, where the input is a temporary
IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": lambda x: F.silu(x, inplace=True),
    "relu": F.relu_,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name`` (a key of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[name]


def activate_temporary(name: str, x: torch.Tensor) -> torch.Tensor:
    """``activation(name)(x)`` for an ``x`` nothing else holds: computed in place when no
    autograd is recording and the activation has an in-place form (one temporary fewer)."""
    in_place = IN_PLACE.get(name)
    if in_place is not None and not torch.is_grad_enabled():
        return in_place(x)
    return ACTIVATIONS[name](x)
