"""A static-shape KV cache (gpt-fast style): buffers sized once, written in place.

A layer's buffers are allocated on its first write, with the key/value head count and head size
that layer produced: so one cache serves a whole model, a tensor-parallel shard (fewer heads per
rank) or a pipeline stage (only some layers), without being told which.

Keys and values are stored in the cache's dtype, which may be wider than the model's:
:func:`cache_dtype` keeps them in float32 for bfloat16/float16 models on the CPU, where
PyTorch's attention runs several times faster in float32 than in bfloat16 (one decode step over
160 keys, 9 query and 3 KV heads: 16 us against 76 us, ``benchmarks`` section of the README).
The attention then computes in that dtype and its output is cast back to the model's.
"""

from __future__ import annotations

import torch

from plugformer.core.errors import ValidationError


def cache_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype of a KV cache for a model computing in ``dtype`` on ``device``."""
    if torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return dtype


class KVCache:
    """Keys and values of every layer for ``batch`` rows and ``length`` slots.

    Slots are filled left to right; ``slot_pos`` records the position of the token in each
    slot (``-1``: empty or padding), which is what attention masks are built from.
    """

    def __init__(
        self,
        batch: int,
        length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.batch, self.length, self.dtype, self.device = batch, length, dtype, device
        self.k: dict[int, torch.Tensor] = {}  # layer -> [B, Hkv, T, D]
        self.v: dict[int, torch.Tensor] = {}
        self.slot_pos = torch.full((batch, length), -1, dtype=torch.long, device=device)
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

    def buffers(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's key and value buffers [B, Hkv, T, D], allocated on first use with the
        heads and head size of ``like`` [b, Hkv, S, D]."""
        return self.buffers_for(layer, like.shape[1], like.shape[3])

    def buffers_for(self, layer: int, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's key and value buffers [B, heads, T, dim] (contiguous), allocated on
        first use."""
        if layer not in self.k:
            shape = (self.batch, heads, self.length, dim)
            self.k[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return self.k[layer], self.v[layer]

    def update(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, S, D] into ``slots`` [S]; return the layer's filled slots
        [B, Hkv, filled, D] (views, in the cache's dtype: attention skips the empty tail)."""
        return _write(*self.buffers(layer, k), slots, k, v, self.filled)

    @property
    def filled_pos(self) -> torch.Tensor:
        """Positions of the filled slots [B, filled] (-1: padding)."""
        return self.slot_pos[:, : self.filled]

    def rows(self, start: int, stop: int, slots: torch.Tensor) -> CacheRows:
        """A view of rows ``start:stop`` whose slots were already reserved (``slots``), for
        running a batch as micro-batches (pipeline parallel)."""
        return CacheRows(self, start, stop, slots)


class CacheRows:
    """Rows of a :class:`KVCache` after :meth:`KVCache.advance`: the same interface, writing
    into the parent's buffers; ``advance`` returns the slots reserved for the whole batch."""

    def __init__(self, parent: KVCache, start: int, stop: int, slots: torch.Tensor) -> None:
        self.parent, self.start, self.stop, self.slots = parent, start, stop, slots

    @property
    def dtype(self) -> torch.dtype:
        return self.parent.dtype

    @property
    def filled_pos(self) -> torch.Tensor:
        return self.parent.filled_pos[self.start : self.stop]  # [b, filled]

    def advance(self, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return self.slots

    def update(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kb, vb = self.parent.buffers(layer, k)
        rows = slice(self.start, self.stop)  # views: [b, Hkv, T, D]
        return _write(kb[rows], vb[rows], slots, k, v, self.parent.filled)


def _write(
    kb: torch.Tensor,
    vb: torch.Tensor,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    filled: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [b, Hkv, S, D] into ``slots`` of the buffers [b, Hkv, T, D]; their first
    ``filled`` slots back as views."""
    kb.index_copy_(2, slots, k if k.dtype == kb.dtype else k.to(kb.dtype))
    vb.index_copy_(2, slots, v if v.dtype == vb.dtype else v.to(vb.dtype))
    return kb[:, :, :filled], vb[:, :, :filled]
