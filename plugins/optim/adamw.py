"""AdamW (Loshchilov and Hutter, 2019, "Decoupled Weight Decay Regularization",
arXiv:1711.05101): ``torch.optim.AdamW`` with weight decay on weight matrices only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugformer.core import hookimpl
from plugformer.core.interfaces.optimizer import OptimizerConfig, OptimizerSettings, decay_groups


@dataclass
class AdamWConfig(OptimizerConfig):
    name: str = "adamw"
    eps: float = 1e-8
    fused: bool = False  # torch's fused kernel (CUDA); the default loop is exact on every device


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over :func:`decay_groups`."""

    def __init__(
        self,
        config: AdamWConfig,
        params: list[tuple[str, torch.nn.Parameter]],
        settings: OptimizerSettings,
    ) -> None:
        self.problems = _problems(config, settings)
        groups = decay_groups(params, settings.weight_decay)
        lr = settings.lr if not self.problems else 0.0
        super().__init__(
            groups, lr=lr, betas=settings.betas, eps=config.eps, fused=config.fused or None
        )

    def check(self) -> list[str]:
        return self.problems


def _problems(config: AdamWConfig, settings: OptimizerSettings) -> list[str]:
    problems = []
    if not settings.lr > 0:
        problems.append(f"train.lr must be > 0, got {settings.lr}")
    if len(settings.betas) != 2 or not all(0 <= b < 1 for b in settings.betas):
        problems.append(f"train.betas must be two numbers in [0, 1), got {list(settings.betas)}")
    if settings.weight_decay < 0:
        problems.append(f"train.weight_decay must be >= 0, got {settings.weight_decay}")
    if not config.eps > 0:
        problems.append(f"optimizer.eps must be > 0, got {config.eps}")
    return problems


@hookimpl
def plugformer_register(registry):
    registry.register("optimizer", "adamw", AdamW, AdamWConfig)
