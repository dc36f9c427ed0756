"""Squared-ReLU feed-forward block (So et al., 2021, "Primer: Searching for Efficient
Transformers for Language Modeling", arXiv:2109.08668).

``down(relu(up(x))^2)``: Primer's squared ReLU in a plain two-layer MLP. The module owns its
weights, loaded by name like every MLP's: ``layers.{i}.mlp.up.weight`` [intermediate, hidden]
and ``layers.{i}.mlp.down.weight`` [hidden, intermediate] (``.bias`` too with
``spec.mlp_bias``). Those are the names the built-in ``plain`` MLP uses, so the generic
decoder's tensor-parallel plan (``up`` colwise, ``down`` rowwise) cuts this MLP as well.

The squared ReLU is this plugin's activation, so ``check()`` refuses a model spec that names
another one (``model.spec.activation``) rather than silently ignoring it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core import MLPConfig, MLPDims, hookimpl


@dataclass
class ReLU2Config(MLPConfig):
    name: str = "relu2"


class ReLU2MLP(nn.Module):
    """Up projection, squared ReLU, down projection."""

    def __init__(self, config: ReLU2Config, dims: MLPDims) -> None:
        super().__init__()
        self.dims = dims
        h, f, bias = dims.hidden_size, dims.intermediate_size, dims.bias
        self.up = nn.Linear(h, f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)

    def check(self) -> list[str]:
        if self.dims.activation != "relu":
            return [
                "relu2 squares a ReLU, so the model's activation must be relu "
                f"(model.spec.activation=relu), got {self.dims.activation!r}"
            ]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, hidden] -> [B, S, hidden]
        return self.down(F.relu(self.up(x)).square())


@hookimpl
def plugformer_register(registry):
    registry.register("mlp", "relu2", ReLU2MLP, ReLU2Config)
