"""The optimizer interface: what updates a model's trainable parameters (``optimizer=adamw``).

The trainer calls the registered builder once per run with the trainable parameters, by name,
and the run's hyper-parameters (``train.lr``, ``train.betas``, ``train.weight_decay``); it gets
a ``torch.optim.Optimizer`` (or any object with ``step``, ``zero_grad``, ``param_groups``,
``state_dict`` and ``load_state_dict``). Weight decay goes to weight matrices only: biases,
norm weights and 1-D parameters are put in a group with ``weight_decay=0`` (the usual choice
for transformers; :func:`decay_groups` does it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class OptimizerConfig:
    """Base config of every optimizer plugin; ``name`` is its registry name."""

    name: str = ""


@dataclass(frozen=True)
class OptimizerSettings:
    """The run's hyper-parameters every optimizer receives (the ``train.*`` keys)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float


@runtime_checkable
class Optimizer(Protocol):
    """Built by ``builder(config, params: list[tuple[str, Parameter]], settings)``; the result
    also has ``check()`` (reasons it cannot run) like every plugin object."""

    param_groups: list[dict[str, Any]]

    def check(self) -> list[str]:
        """Reasons this optimizer cannot train these parameters (empty when it can)."""
        ...

    def step(self) -> Any:
        """One update from the parameters' ``.grad``."""
        ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def decay_groups(
    params: list[tuple[str, torch.nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """Two parameter groups: weight matrices (ndim >= 2, decayed) and the rest (biases, norm
    weights: no decay), each keeping the parameters' order."""
    decay = [p for _, p in params if p.ndim >= 2]
    rest = [p for _, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups
