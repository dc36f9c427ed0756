"""Learned absolute position embeddings (GPT-2: Radford et al., 2019; from the Transformer's
learned variant, Vaswani et al., 2017, arXiv:1706.03762, section 3.5).

One trained vector per position, added to the token embeddings; queries, keys and scores are
left unchanged. Its weight is ``positional.weight`` [max_seq_len, hidden_size].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import PositionalConfig, PositionalDims, hookimpl


@dataclass
class LearnedConfig(PositionalConfig):
    name: str = "learned"


class LearnedPositions(nn.Module):
    """``positional.weight[p]`` added to the embedding of the token at position ``p``."""

    def __init__(self, config: LearnedConfig, dims: PositionalDims) -> None:
        super().__init__()
        self.dims = dims
        # zeros until loaded (a random model's decoder draws it like its embeddings)
        self.weight = nn.Parameter(torch.zeros(max(dims.max_seq_len, 1), max(dims.hidden_size, 1)))

    def check(self) -> list[str]:
        if self.dims.hidden_size <= 0 or self.dims.max_seq_len <= 0:
            return ["learned positions need hidden_size and max_seq_len (PositionalDims)"]
        return []

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [B, S] -> [B, S, hidden]
        return nn.functional.embedding(positions, self.weight)

    def prepare(self, positions: torch.Tensor) -> None:
        return None

    def rotate(self, q: torch.Tensor, k: torch.Tensor, state: None):
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "learned", LearnedPositions, LearnedConfig)
