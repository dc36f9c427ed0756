"""Stochastic gradient descent with momentum (``torch.optim.SGD``; Polyak, 1964, heavy-ball
momentum), weight decay on weight matrices only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.optimizer import OptimizerConfig, OptimizerSettings, decay_groups


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    momentum: float = 0.9  # train.betas is not used


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` over :func:`decay_groups`."""

    def __init__(
        self,
        config: SGDConfig,
        params: list[tuple[str, torch.nn.Parameter]],
        settings: OptimizerSettings,
    ) -> None:
        self.problems = []
        if not settings.lr > 0:
            self.problems.append(f"train.lr must be > 0, got {settings.lr}")
        if not 0 <= config.momentum < 1:
            self.problems.append(f"optimizer.momentum must be in [0, 1), got {config.momentum}")
        groups = decay_groups(params, max(settings.weight_decay, 0.0))
        super().__init__(groups, lr=max(settings.lr, 0.0), momentum=max(config.momentum, 0.0))

    def check(self) -> list[str]:
        return self.problems


@hookimpl
def plugformer_register(registry):
    registry.register("optimizer", "sgd", SGD, SGDConfig)
