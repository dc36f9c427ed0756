"""A safe, memory-mapped reader of GGUF files (spec: ggml-org/ggml, docs/gguf.md).

GGUF is llama.cpp's single-file format: a header, metadata key-values, tensor infos and data.

Reads GGUF v2 and v3 (little-endian) with its own reader over ``mmap``: metadata of every value
type (nested arrays too), tensor infos and the aligned data section. F32, F16 and BF16 tensors
come memory-mapped in their own dtype; Q8_0, Q4_0 and Q4_1 blocks are dequantized to float32 on
load (:mod:`plugformer.core.checkpoints.gguf_quants`), or handed out raw
(:meth:`GGUFFile.blocks`) for quantized execution (:mod:`plugformer.core.quant.load`).

Every declared count, length and size is checked against the real file size before it is used,
so a malformed file is a :class:`CheckpointError` naming the file and the field, never a crash,
a hang or an allocation sized by the file's claims.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from plugformer.core.checkpoints.gguf_quants import (
    GGML_TYPES,
    OTHER_TYPE_NAMES,
    GGMLType,
    dequantize_to,
)
from plugformer.core.errors import CheckpointError
from plugformer.core.memory import drop_mapped_pages

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 had uint32 counts, v2 uint64 ones; v3 adds big-endian files
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8
MAX_KEY_BYTES = 65535
INT64_MAX = 2**63 - 1

# Metadata value type id -> struct code; 7 (bool) is a byte that must be 0 or 1.
_SCALAR_CODES = {
    **{0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B"},
    **{10: "Q", 11: "q", 12: "d"},
}
_BOOL, _FLOAT32, _STRING, _ARRAY = 7, 6, 8, 9
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lies: ``ne`` fastest-first as in the file, ``offset`` from file start."""

    name: str
    ne: tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))  # torch order: ne[0] (the row length) is last


def _float32_repr(x: float) -> float:
    """The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06)."""
    bits = struct.pack("<f", x)
    for digits in range(1, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack("<f", y) == bits:
            return y
    return x


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure names the file."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, msg: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: {msg}")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def unpack(self, code: str, what: str) -> Any:
        n = struct.calcsize("<" + code)
        if n > self.remaining:
            self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes, file is {self.size}")
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, limit: int | None = None, ascii_only: bool = False) -> str:
        n = self.unpack("Q", f"{what} (string length)")
        if n > self.remaining:
            self.fail(f"{what}: string length {n} runs past the end ({self.remaining} bytes left)")
        if limit is not None and n > limit:
            self.fail(f"{what}: string length {n} exceeds the limit of {limit} bytes")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("ascii" if ascii_only else "utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what}: string is not valid {'ASCII' if ascii_only else 'UTF-8'}")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_CODES:
            v = self.unpack(_SCALAR_CODES[vtype], what)
            if vtype == _BOOL:
                return self._bools([v], what)[0]
            return _float32_repr(v) if vtype == _FLOAT32 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what, depth)
        self.fail(f"{what}: unknown metadata value type {vtype}")

    def array(self, what: str, depth: int) -> list[Any]:
        if depth >= MAX_ARRAY_NESTING:
            self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_NESTING} levels")
        etype = self.unpack("I", f"{what} (array element type)")
        n = self.unpack("Q", f"{what} (array length)")
        code = _SCALAR_CODES.get(etype)
        if code is not None:
            least = struct.calcsize("<" + code)
        elif etype in (_STRING, _ARRAY):
            least = 8 if etype == _STRING else 12  # a length, or an element type and a length
        else:
            self.fail(f"{what}: unknown array element type {etype}")
        if n > self.remaining // least:
            self.fail(
                f"{what}: array length {n} runs past the end of the file ({self.remaining} "
                f"bytes left, each element needs at least {least})"
            )
        if code is None:
            return [self.value(etype, f"{what}[{j}]", depth + 1) for j in range(n)]
        values = list(struct.unpack_from(f"<{n}{code}", self.buf, self.pos))
        self.pos += n * least
        return self._bools(values, what) if etype == _BOOL else values

    def _bools(self, values: list[int], what: str) -> list[Any]:
        if any(v > 1 for v in values):
            self.fail(f"{what}: a bool must be the byte 0 or 1")
        return [bool(v) for v in values]


class GGUFFile:
    """A parsed GGUF file: ``metadata`` and ``tensors`` (infos by GGUF name), data mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        except (OSError, ValueError) as e:  # missing, a directory, unmappable ...
            raise CheckpointError(f"{self.path}: cannot open as a GGUF file: {e}") from e
        if mm is None:
            raise CheckpointError(f"{self.path}: empty file, not GGUF")
        self._mm: mmap.mmap | None = mm
        try:
            self._parse(_Cursor(mm, self.path))
        except BaseException:
            mm.close()  # no tensor has been handed out yet
            self._mm = None
            raise

    def _parse(self, cur: _Cursor) -> None:
        if cur.buf[:4] != MAGIC:
            cur.fail(f"bad magic {bytes(cur.buf[:4])!r}, expected {MAGIC!r}: not a GGUF file")
        cur.pos = 4
        self.version: int = cur.unpack("I", "version")
        if self.version not in VERSIONS:
            if int.from_bytes(self.version.to_bytes(4, "little"), "big") in VERSIONS:
                cur.fail("big-endian GGUF files are not supported")
            cur.fail(f"unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = cur.unpack("Q", "tensor count")
        n_kv = cur.unpack("Q", "metadata key-value count")
        for count, what, least in (
            (n_kv, "metadata key-value count", _MIN_KV_BYTES),
            (n_tensors, "tensor count", _MIN_TENSOR_INFO_BYTES),
        ):
            if count > cur.remaining // least:
                cur.fail(
                    f"absurd {what} {count}: each entry needs at least {least} bytes and only "
                    f"{cur.remaining} bytes remain"
                )
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}  # key -> GGUF value type id
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", MAX_KEY_BYTES, ascii_only=True)
            if key in self.metadata:
                cur.fail(f"duplicate metadata key {key!r}")
            self.value_types[key] = cur.unpack("I", f"value type of metadata key {key!r}")
            self.metadata[key] = cur.value(self.value_types[key], f"metadata key {key!r}")
        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        a = self.alignment
        if type(a) is not int or a <= 0 or a % 8 or a & (a - 1):
            cur.fail(f"general.alignment={a!r} is not a power of two and a multiple of 8")
        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = cur.pos + (-cur.pos % a)  # the data section starts aligned
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, ne, gtype, rel, nbytes in infos:
            if name in self.tensors:
                cur.fail(f"duplicate tensor name {name!r}")
            start = self.data_offset + rel
            if start + nbytes > cur.size:
                cur.fail(
                    f"tensor {name!r}: data [{start}, {start + nbytes}) lies beyond the end of "
                    f"the file ({cur.size} bytes)"
                )
            self.tensors[name] = GGUFTensorInfo(name, ne, gtype, start, nbytes)
        laid = sorted((t for t in self.tensors.values() if t.nbytes), key=lambda t: t.offset)
        for prev, nxt in itertools.pairwise(laid):
            if nxt.offset < prev.offset + prev.nbytes:
                cur.fail(f"tensors {prev.name!r} and {nxt.name!r} overlap in the data section")

    def _tensor_info(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], GGMLType, int, int]:
        name = cur.string(f"name of tensor #{i}")
        if not name:
            cur.fail(f"tensor #{i} has an empty name")
        n_dims = cur.unpack("I", f"tensor {name!r}: n_dims")
        if n_dims > MAX_DIMS:
            cur.fail(f"tensor {name!r}: n_dims={n_dims} exceeds the maximum of {MAX_DIMS}")
        ne = tuple(cur.unpack("Q", f"tensor {name!r}: dimension {d}") for d in range(n_dims))
        type_id = cur.unpack("I", f"tensor {name!r}: type")
        rel = cur.unpack("Q", f"tensor {name!r}: offset")
        numel = 1
        for n in ne:
            numel *= n
        if any(n > INT64_MAX for n in ne) or numel > INT64_MAX:
            cur.fail(f"tensor {name!r}: dimensions {list(ne)} overflow int64")
        gtype = GGML_TYPES.get(type_id)
        if gtype is None:
            label = OTHER_TYPE_NAMES.get(type_id, "unknown")
            cur.fail(
                f"tensor {name!r} has type {label} (id {type_id}); supported: "
                + ", ".join(f"{t.name} ({k})" for k, t in GGML_TYPES.items())
            )
        if ne and ne[0] % gtype.block:
            cur.fail(
                f"tensor {name!r}: row length {ne[0]} is not a multiple of {gtype.name}'s "
                f"block of {gtype.block}"
            )
        nbytes = numel // gtype.block * gtype.block_bytes
        if nbytes > cur.size:
            cur.fail(
                f"tensor {name!r}: dimensions {list(ne)} need {nbytes} bytes of "
                f"{gtype.name}, more than the whole file ({cur.size} bytes)"
            )
        if rel % self.alignment:
            cur.fail(
                f"tensor {name!r}: data offset {rel} is misaligned (alignment {self.alignment})"
            )
        return name, ne, gtype, rel, nbytes

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor in torch order (``ne`` reversed): mapped for F32/F16/BF16, else float32
        (or blocks dequantized straight into ``dtype``, with no float32 copy of the whole)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        if self._mm is None:
            raise CheckpointError(f"{self.path}: the checkpoint is closed")
        gtype = info.type
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=gtype.dtype)
        if gtype.block == 1:
            count = info.nbytes // gtype.block_bytes
            flat = torch.frombuffer(self._mm, dtype=gtype.dtype, count=count, offset=info.offset)
            return flat.view(info.shape)
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        out = dequantize_to(raw.view(-1, gtype.block_bytes), gtype.name, dtype or torch.float32)
        return out.view(info.shape)

    def blocks(self, name: str) -> torch.Tensor:
        """The raw quantized blocks of a Q8_0/Q4_0/Q4_1 tensor, undequantized: uint8
        [rows, row_length / 32, block_bytes], mapped from the file (rows in ``ne`` order)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        if self._mm is None:
            raise CheckpointError(f"{self.path}: the checkpoint is closed")
        gtype = info.type
        if gtype.block == 1 or not info.ne:
            raise CheckpointError(f"{self.path}: tensor {name!r} ({gtype.name}) has no blocks")
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        return raw.view(-1, info.ne[0] // gtype.block, gtype.block_bytes)

    def drop_pages(self) -> None:
        """Drop the map's resident pages (see :func:`plugformer.core.memory.drop_mapped_pages`):
        once loading copied from them, they need not count in this process's memory."""
        drop_mapped_pages(self._mm)

    def close(self) -> None:
        """Drop the mapping; tensors already returned keep it alive until they are freed."""
        self._mm = None  # torch.frombuffer holds a reference; closing it would unmap their memory
