"""A safe, zero-copy reader of the safetensors format (huggingface/safetensors, "Format").

Layout: 8 bytes ``N`` (u64, little-endian), ``N`` bytes of UTF-8 JSON (an object mapping tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` plus an optional ``__metadata__``
of str -> str), then the data section; offsets are relative to the data section, row-major,
little-endian, and the tensors must cover the data section exactly (no overlap, no gap).

Every declared number is checked against the real file size before it is used, so a crafted
file costs at most one read of a header no larger than the file (and 100 MB) and fails with a
:class:`CheckpointError` naming the file and the tensor; nothing is allocated by a declared size.

Tensors are views of a private (copy-on-write) memory map of the file: zero-copy, writable, and
writes never reach the file. A tensor whose offset is not a multiple of its element size (only
hand-made files) is copied instead. Tensors stay valid after :meth:`SafetensorsFile.close`.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import torch

from plugformer.core.errors import CheckpointError
from plugformer.core.memory import drop_mapped_pages

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit of the reference implementation
_MAX_BYTES = 2**63 - 1  # torch sizes and strides are int64

#: safetensors dtype names -> (torch dtype, element size), for those this torch has.
DTYPES: dict[str, tuple[torch.dtype, int]] = {}
for _name, _attr, _size in (
    ("F64", "float64", 8),
    ("F32", "float32", 4),
    ("F16", "float16", 2),
    ("BF16", "bfloat16", 2),
    ("I64", "int64", 8),
    ("I32", "int32", 4),
    ("I16", "int16", 2),
    ("I8", "int8", 1),
    ("U64", "uint64", 8),
    ("U32", "uint32", 4),
    ("U16", "uint16", 2),
    ("U8", "uint8", 1),
    ("BOOL", "bool", 1),
    ("C64", "complex64", 8),
    ("F8_E4M3", "float8_e4m3fn", 1),
    ("F8_E5M2", "float8_e5m2", 1),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz", 1),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz", 1),
    ("F8_E8M0", "float8_e8m0fnu", 1),
):
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        DTYPES[_name] = (getattr(torch, _attr), _size)


class _Entry:
    __slots__ = ("begin", "dtype", "end", "itemsize", "name", "shape")

    def __init__(
        self,
        name: str,
        dtype: torch.dtype,
        itemsize: int,
        shape: tuple[int, ...],
        begin: int,
        end: int,
    ) -> None:
        self.name, self.dtype, self.itemsize = name, dtype, itemsize
        self.shape, self.begin, self.end = shape, begin, end


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed and checked on open, tensors on demand.

    ``SafetensorsFile(path)``; ``.names()``, ``.info(name) -> (shape, dtype)``,
    ``.tensor(name)``, ``.metadata`` (the ``__metadata__`` dict), ``.close()``; a context
    manager. Raises :class:`CheckpointError` for anything malformed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._entries: dict[str, _Entry] = {}
        self._mmap: mmap.mmap | None = None
        if sys.byteorder != "little":
            raise CheckpointError(f"{self.path}: safetensors is little-endian; this host is not")
        try:
            # O_NONBLOCK: a FIFO or device given as the path must fail, not hang the open
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                self._fail("not a regular file")
            with os.fdopen(fd, "rb") as f:
                size = st.st_size
                if size < 8:
                    self._fail(f"file is {size} bytes, too short for the 8-byte header length")
                (n,) = struct.unpack("<Q", f.read(8))
                if n > MAX_HEADER_BYTES:
                    self._fail(f"header length {n} is absurd (limit {MAX_HEADER_BYTES} bytes)")
                if 8 + n > size:
                    self._fail(f"header length {n} runs past the end of the {size}-byte file")
                raw = f.read(n)
                if len(raw) != n:
                    self._fail(f"file shrank while reading its {n}-byte header")
                self._data_start = 8 + n
                self._data_len = size - self._data_start
                self._parse(raw)
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                if len(m) != size:
                    m.close()
                    self._fail(f"file changed size while opening ({size} -> {len(m)} bytes)")
                self._mmap = m
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read: {e}") from e

    def _fail(self, msg: str, tensor: str | None = None) -> NoReturn:
        where = f"{self.path}: tensor {tensor!r}: " if tensor is not None else f"{self.path}: "
        raise CheckpointError(where + msg)

    def _parse(self, raw: bytes) -> None:
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path}: header is not valid UTF-8: {e}") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{self.path}: header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            self._fail(f"header must be a JSON object, got {type(header).__name__}")
        meta = header.pop("__metadata__", None)
        if meta is not None:
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                self._fail("__metadata__ must be an object of strings to strings")
            self.metadata = dict(meta)
        for name, info in header.items():
            self._entries[name] = self._entry(name, info)
        self._check_coverage()

    def _entry(self, name: str, info: Any) -> _Entry:
        if not isinstance(info, dict):
            self._fail(f"entry must be an object, got {type(info).__name__}", name)
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            self._fail(f"entry lacks {', '.join(missing)}", name)
        dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            self._fail(f"unknown dtype {dtype_name!r} (known: {', '.join(DTYPES)})", name)
        dtype, itemsize = DTYPES[dtype_name]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            self._fail(f"shape must be a list of non-negative integers, got {shape!r:.200}", name)
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
        ):
            self._fail(f"data_offsets must be two integers, got {offsets!r:.200}", name)
        begin, end = offsets
        if begin < 0 or begin > end:
            self._fail(f"data_offsets [{begin}, {end}] are not 0 <= begin <= end", name)
        if end > self._data_len:
            self._fail(
                f"data_offsets [{begin}, {end}] run past the {self._data_len}-byte data section",
                name,
            )
        # strides must fit in int64 even when a zero dimension makes the tensor empty
        span = 1
        for d in shape:
            span *= max(d, 1)
            if span * itemsize > _MAX_BYTES:
                self._fail(f"shape {shape!r:.200} overflows: its byte size exceeds 2**63 - 1", name)
        numel = 0 if 0 in shape else span
        if numel * itemsize != end - begin:
            self._fail(
                f"shape {shape} x {dtype_name} is {numel * itemsize} bytes but data_offsets "
                f"[{begin}, {end}] hold {end - begin}",
                name,
            )
        return _Entry(name, dtype, itemsize, tuple(shape), begin, end)

    def _check_coverage(self) -> None:
        covered = 0
        prev: _Entry | None = None
        for e in sorted(self._entries.values(), key=lambda e: (e.begin, e.end)):
            if e.begin < covered:
                assert prev is not None
                self._fail(
                    f"data_offsets [{e.begin}, {e.end}] overlap tensor {prev.name!r} "
                    f"[{prev.begin}, {prev.end}]",
                    e.name,
                )
            if e.begin > covered:
                self._fail(f"bytes [{covered}, {e.begin}) of the data section belong to no tensor")
            covered, prev = e.end, e
        if covered != self._data_len:
            self._fail(
                f"bytes [{covered}, {self._data_len}) of the data section belong to no tensor "
                "(trailing data)"
            )

    # -- API ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Tensor names, in header order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _get(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}") from None

    def info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of ``name``, without touching its data."""
        e = self._get(name)
        return e.shape, e.dtype

    def tensor(self, name: str) -> torch.Tensor:
        """``name`` as a zero-copy view of the (copy-on-write) memory map."""
        e = self._get(name)
        if self._mmap is None:
            raise CheckpointError(f"{self.path}: file is closed (reading tensor {name!r})")
        nbytes = e.end - e.begin
        if nbytes == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        offset = self._data_start + e.begin
        if offset % e.itemsize == 0:
            flat = torch.frombuffer(
                self._mmap, dtype=e.dtype, count=nbytes // e.itemsize, offset=offset
            )
        else:  # misaligned for its dtype (never written by the reference library): copy
            raw = torch.frombuffer(self._mmap, dtype=torch.uint8, count=nbytes, offset=offset)
            flat = raw.clone().view(e.dtype)
        if e.dtype == torch.bool and bool((flat.view(torch.uint8) > 1).any()):
            self._fail("BOOL data holds bytes other than 0 and 1", name)
        return flat.reshape(e.shape)

    def drop_pages(self) -> None:
        """Drop the map's resident pages (see :func:`plugformer.core.memory.drop_mapped_pages`):
        once loading copied from them, they need not count in this process's memory."""
        drop_mapped_pages(self._mmap)

    def close(self) -> None:
        """Drop the memory map; tensors already returned keep it alive and stay valid."""
        # Not mmap.close(): torch.frombuffer keeps a reference to the map, not a buffer export,
        # so closing it would unmap memory under live tensors. Dropping ours unmaps it now if
        # no tensor uses it, else when the last one is freed.
        self._mmap = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r}, {len(self._entries)} tensors)"
