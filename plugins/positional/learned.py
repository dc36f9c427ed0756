"""Learned absolute position embeddings (GPT-2: Radford et al., 2019; from the Transformer's
learned variant, Vaswani et al., 2017, arXiv:1706.03762, section 3.5).

One trained vector per position, added to the token embeddings; queries, keys and scores are
left unchanged. Its weight is ``positional.weight`` [max_seq_len, hidden_size].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import PositionalBase, PositionalConfig, PositionalDims, hookimpl


@dataclass
class LearnedConfig(PositionalConfig):
    name: str = "learned"


class LearnedPositions(PositionalBase):
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


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "learned", LearnedPositions, LearnedConfig)
