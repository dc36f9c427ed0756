"""Lion, "EvoLved Sign Momentum" (Chen et al., 2023, "Symbolic Discovery of Optimization
Algorithms", arXiv:2302.06675): every weight moves by the learning rate times the sign of an
interpolation of the momentum and the gradient.

One step, for a weight ``w`` with gradient ``g`` and momentum ``m`` (zero at first), as in
the paper's Algorithm 2::

    c = beta1 * m + (1 - beta1) * g
    w = w - lr * (sign(c) + weight_decay * w)
    m = beta2 * m + (1 - beta2) * g

Only ``m`` is kept per weight, half of AdamW's state. The betas are this plugin's own knobs,
``optimizer.beta1`` (0.9) and ``optimizer.beta2`` (0.99), the paper's defaults: they mean
something else than AdamW's, so ``train.betas`` is not read. ``train.lr`` and
``train.weight_decay`` are: the paper sets lr 3-10x lower and weight decay 3-10x higher than
for AdamW, because a sign has a larger norm than Adam's update. Weight decay goes to weight
matrices only, through :func:`decay_groups`.

It subclasses ``torch.optim.Optimizer``, so ``state_dict`` / ``load_state_dict`` (and the
trainer's checkpoints, which save ``m`` as ``state/<param>/exp_avg``) come with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from plugformer.core import OptimizerConfig, OptimizerSettings, decay_groups, hookimpl


@dataclass
class LionConfig(OptimizerConfig):
    name: str = "lion"
    beta1: float = 0.9  # interpolation of the update: sign(beta1 * m + (1 - beta1) * g)
    beta2: float = 0.99  # the momentum's decay: m = beta2 * m + (1 - beta2) * g


class Lion(torch.optim.Optimizer):
    """Sign of the interpolated momentum, decoupled weight decay, over :func:`decay_groups`."""

    def __init__(
        self,
        config: LionConfig,
        params: list[tuple[str, torch.nn.Parameter]],
        settings: OptimizerSettings,
    ) -> None:
        self.problems = problems(config, settings)
        lr = settings.lr if not self.problems else 0.0  # refused: never steps anyway
        groups = decay_groups(params, max(settings.weight_decay, 0.0))
        defaults = {"lr": lr, "beta1": config.beta1, "beta2": config.beta2}
        super().__init__(groups, defaults)

    def check(self) -> list[str]:
        return self.problems

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["beta1"], group["beta2"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                state = self.state[w]
                if not state:
                    state["exp_avg"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = (m * beta1).add_(g, alpha=1 - beta1).sign_()  # sign(c)
                update.add_(w, alpha=wd)  # sign(c) + weight_decay * w
                w.add_(update, alpha=-lr)
                m.mul_(beta2).add_(g, alpha=1 - beta2)
        return loss


def problems(config: LionConfig, settings: OptimizerSettings) -> list[str]:
    out = []
    if not 0 < settings.lr < math.inf:
        out.append(f"train.lr must be a finite number > 0, got {settings.lr}")
    if not 0 <= settings.weight_decay < math.inf:
        out.append(f"train.weight_decay must be a finite number >= 0, got {settings.weight_decay}")
    for key in ("beta1", "beta2"):
        b = getattr(config, key)
        if not 0 <= b < 1:  # NaN too
            out.append(f"optimizer.{key} must be in [0, 1), got {b!r}")
    return out


@hookimpl
def plugformer_register(registry):
    registry.register("optimizer", "lion", Lion, LionConfig)
