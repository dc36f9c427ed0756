"""A static-shape KV cache (gpt-fast style): buffers sized once, written in place."""

from __future__ import annotations

import torch

from plugformer.core.errors import ValidationError


class KVCache:
    """Keys and values of every layer for ``batch`` rows and ``length`` slots.

    Slots are filled left to right; ``slot_pos`` records the position of the token in each
    slot (``-1``: empty or padding), which is what attention masks are built from.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, num_kv_heads, length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.slot_pos = torch.full((batch, length), -1, dtype=torch.long, device=device)
        self.length = length
        self.filled = 0  # slots used so far

    def advance(self, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Reserve slots for S new tokens at ``positions`` [B, S]; returns slot indices [S]."""
        s = positions.shape[1]
        if self.filled + s > self.length:
            raise ValidationError(
                f"KV cache full: {self.filled} + {s} tokens exceed its {self.length} slots"
            )
        slots = torch.arange(self.filled, self.filled + s, device=positions.device)
        pos = positions if valid is None else positions.masked_fill(~valid, -1)
        self.slot_pos[:, self.filled : self.filled + s] = pos
        self.filled += s
        return slots

    def update(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, S, D] into ``slots`` [S]; return the layer's full buffers
        [B, Hkv, T, D]."""
        self.k[layer].index_copy_(2, slots, k)
        self.v[layer].index_copy_(2, slots, v)
        return self.k[layer], self.v[layer]
