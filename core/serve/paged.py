"""A paged KV cache: keys and values in fixed-size blocks from one pool, per-sequence block
tables, blocks handed back when a sequence finishes (vLLM's PagedAttention layout, gathered
for the attention plugins instead of read by a special kernel).

:class:`BlockPool` owns the storage: per layer, keys and values of ``num_blocks`` blocks of
``block_size`` tokens, [num_blocks * block_size, Hkv, D], allocated on the layer's first write
with the heads and head size it writes (so a pool serves any model). :class:`PagedBatch` is one
forward pass's view of it for a batch of sequences, with the interface the decoder uses for a
cache (``advance``, ``update``, ``filled_pos``, ``dtype``): each row writes its new tokens into
its own blocks and reads back all of its tokens, gathered into [B, Hkv, T, D] with ``-1``
positions (masked) past a row's length. Attention plugins therefore run unchanged on it.

Prefix caching (``prefix_caching=True``): a full block is keyed by a hash chain of the tokens
of every block up to it (and the adapter the keys were computed with), so equal keys mean equal
prefixes. A new sequence takes the cached blocks of its longest cached prefix (each block
counts its users); a block no sequence uses stays cached, in least-recently-used order, until
its slot is needed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from plugformer.core.errors import ValidationError


class BlockPool:
    """``num_blocks`` blocks of ``block_size`` token slots, and which of them are free."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValidationError(
                f"kv_cache: num_blocks and block_size must be positive, got {num_blocks} and "
                f"{block_size}"
            )
        self.num_blocks, self.block_size = num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)
        self.k: dict[int, torch.Tensor] = {}  # layer -> [num_blocks * block_size, Hkv, D]
        self.v: dict[int, torch.Tensor] = {}
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: lowest ids first
        self.refs = [0] * num_blocks  # sequences using each block
        self._by_key: dict[bytes, int] = {}  # prefix key -> the block holding it
        self._key_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached, unused; oldest first
        self.hits = 0  # blocks taken from the prefix cache

    @property
    def free_blocks(self) -> int:
        """Blocks a sequence can get now (free, or cached and unused)."""
        return len(self._free) + len(self._idle)

    @staticmethod
    def chain(parent: bytes, tokens: list[int], salt: str = "") -> bytes:
        """The key of a full block: the parent block's key, the adapter, its tokens."""
        h = hashlib.sha256(parent)
        h.update(salt.encode() + b"\0" + b",".join(str(t).encode() for t in tokens))
        return h.digest()

    def lookup(self, keys: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of ``keys``, now used once more."""
        found = []
        for key in keys:
            block = self._by_key.get(key)
            if block is None:
                break
            found.append(block)
        for block in found:
            self._idle.pop(block, None)
            self.refs[block] += 1
        self.hits += len(found)
        return found

    def register(self, block: int, key: bytes) -> None:
        """Record that ``block`` (full) holds the prefix ``key`` (a prefix already cached in
        another block keeps that one)."""
        if key not in self._by_key and block not in self._key_of:
            self._by_key[key] = block
            self._key_of[block] = key

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    def allocate(self, n: int) -> list[int]:
        """``n`` blocks, free ones first, then the least recently used cached ones (their
        prefix forgotten); ValidationError when fewer are available: check first."""
        if n > self.free_blocks:
            raise ValidationError(f"kv_cache: {n} blocks asked, {self.free_blocks} free")
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._idle.popitem(last=False)
                del self._by_key[self._key_of.pop(block)]
            self.refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: list[int]) -> None:
        """A sequence stops using ``blocks``: unused ones become free (or stay cached)."""
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] > 0:
                continue
            if block in self._key_of:
                self._idle[block] = None  # the most recently used end
            else:
                self._free.append(block)

    def storage(self, layer: int, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.k:
            shape = (self.num_blocks * self.block_size, heads, dim)
            self.k[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return self.k[layer], self.v[layer]


class PagedBatch:
    """One forward pass over rows of sequences: row ``i`` has ``cached[i]`` tokens in the pool
    already and writes its valid new tokens after them, in the blocks of ``tables[i]``."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], cached: list[int]) -> None:
        self.pool, self.tables, self.cached = pool, tables, cached
        self.dtype = pool.dtype
        self._read: torch.Tensor | None = None  # [B, T] slot of each row's t-th token
        self._pos: torch.Tensor | None = None  # [B, T] its position, -1 past the row's end

    def _slots(self, row: int, start: int, stop: int) -> list[int]:
        bs, table = self.pool.block_size, self.tables[row]
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]

    def advance(self, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Reserve the slots of the new tokens [B, S] (-1 for padding); the new tokens of a
        row are its valid columns, at positions ``cached[i]`` onwards."""
        b, s = positions.shape
        counts = [s] * b if valid is None else [int(x) for x in valid.sum(dim=1)]
        slots = torch.full((b, s), -1, dtype=torch.long)
        total = [c + n for c, n in zip(self.cached, counts, strict=True)]
        longest = max(total)
        read = torch.zeros((b, longest), dtype=torch.long)
        pos = torch.full((b, longest), -1, dtype=torch.long)
        for i in range(b):
            if total[i] > len(self.tables[i]) * self.pool.block_size:
                raise ValidationError(f"kv_cache: row {i} has too few blocks for its tokens")
            cols = range(s) if valid is None else torch.nonzero(valid[i]).flatten().tolist()
            new = self._slots(i, self.cached[i], total[i])
            for col, slot in zip(cols, new, strict=True):
                slots[i, col] = slot
            read[i, : total[i]] = torch.tensor(self._slots(i, 0, total[i]), dtype=torch.long)
            pos[i, : total[i]] = torch.arange(total[i])
        device = positions.device
        self._read, self._pos = read.to(device), pos.to(device)
        return slots.to(device)

    @property
    def filled_pos(self) -> torch.Tensor:
        """Positions of each row's cached tokens [B, T] (-1: past the row's end)."""
        assert self._pos is not None, "advance() first"
        return self._pos

    def update(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, S, D] of the valid new tokens into their slots; return every
        token of each row, [B, Hkv, T, D] (zeros past a row's end, masked by position -1)."""
        assert self._read is not None, "advance() first"
        kb, vb = self.pool.storage(layer, k.shape[1], k.shape[3])
        keep = slots >= 0  # [B, S]
        where = slots[keep]  # [n]
        new_k = k.transpose(1, 2)[keep]  # [n, Hkv, D]
        new_v = v.transpose(1, 2)[keep]
        kb.index_copy_(0, where, new_k if new_k.dtype == kb.dtype else new_k.to(kb.dtype))
        vb.index_copy_(0, where, new_v if new_v.dtype == vb.dtype else new_v.to(vb.dtype))
        keys = kb[self._read].transpose(1, 2)  # [B, T, Hkv, D] -> [B, Hkv, T, D]
        values = vb[self._read].transpose(1, 2)
        return keys, values
