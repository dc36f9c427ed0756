"""No positional encoding (NoPE; Kazemnejad et al., 2023, arXiv:2305.19466): causal mask only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.interfaces.positional import PositionalConfig, PositionalDims


@dataclass
class NoPositionalConfig(PositionalConfig):
    name: str = "none"


class NoPositional(nn.Module):
    """Leaves queries, keys and scores unchanged."""

    def __init__(self, config: NoPositionalConfig, dims: PositionalDims) -> None:
        super().__init__()

    def check(self) -> list[str]:
        return []

    def prepare(self, positions: torch.Tensor) -> None:
        return None

    def rotate(self, q: torch.Tensor, k: torch.Tensor, state: None):
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "none", NoPositional, NoPositionalConfig)
