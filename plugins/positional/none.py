"""No positional encoding (NoPE; Kazemnejad et al., 2023, arXiv:2305.19466): causal mask only."""

from __future__ import annotations

from dataclasses import dataclass

from plugformer.core import PositionalBase, PositionalConfig, PositionalDims, hookimpl


@dataclass
class NoPositionalConfig(PositionalConfig):
    name: str = "none"


class NoPositional(PositionalBase):
    """Leaves queries, keys and scores unchanged (everything :class:`PositionalBase` does)."""

    def __init__(self, config: NoPositionalConfig, dims: PositionalDims) -> None:
        super().__init__()


@hookimpl
def plugformer_register(registry):
    registry.register("positional", "none", NoPositional, NoPositionalConfig)
