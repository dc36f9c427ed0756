"""Our safetensors reader: equal to the reference library on its files, and a typed error in
under a second, without allocating by a declared size, for every malformed header."""

from __future__ import annotations

import json
import os
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugformer.core.checkpoints.safetensors import DTYPES, SafetensorsFile
from plugformer.core.errors import CheckpointError


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    # bytes and shape: float8 has no torch.equal, and NaN payloads must survive too
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def test_reads_every_dtype_the_reference_library_writes(tmp_path: Path):
    tensors = {f"t.{name}": _sample(dt, (3, 5)) for name, (dt, _) in DTYPES.items()}
    tensors["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.zeros(0, 7)
    tensors["vector"] = torch.arange(11, dtype=torch.int64)
    try:
        save_file(tensors, tmp_path / "all.safetensors", metadata={"format": "pt", "k": "v"})
    except Exception:  # an older safetensors without some of this torch's dtypes
        for name in [n for n in tensors if n.startswith("t.F8_E8M0")]:
            tensors.pop(name)
        save_file(tensors, tmp_path / "all.safetensors", metadata={"format": "pt", "k": "v"})
    with SafetensorsFile(tmp_path / "all.safetensors") as f:
        assert sorted(f.names()) == sorted(tensors)
        assert f.metadata == {"format": "pt", "k": "v"}
        for name, want in tensors.items():
            assert f.info(name) == (tuple(want.shape), want.dtype), name
            assert _same(f.tensor(name), want), name


def test_core_dtypes_are_all_there():
    for name in ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"):
        assert name in DTYPES
    assert DTYPES["F8_E4M3"][0] == torch.float8_e4m3fn
    assert DTYPES["F8_E5M2"][0] == torch.float8_e5m2


def test_tensors_are_zero_copy_writable_and_outlive_close(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, path)
    f = SafetensorsFile(path)
    a, b = f.tensor("w"), f.tensor("w")
    assert a.data_ptr() == b.data_ptr()  # both views of the one mapping
    a.add_(100)  # copy-on-write: visible here, never written to the file
    assert b[0, 0].item() == 100
    f.close()
    assert a.sum().item() == sum(range(12)) + 1200  # still mapped after close
    with SafetensorsFile(path) as g:
        assert torch.equal(g.tensor("w"), torch.arange(12, dtype=torch.float32).reshape(3, 4))
    with pytest.raises(CheckpointError, match="closed"):
        f.tensor("w")
    with pytest.raises(CheckpointError, match="no tensor named 'x'"):
        SafetensorsFile(path).info("x")


def test_no_metadata_and_no_tensors(tmp_path: Path):
    path = tmp_path / "e.safetensors"
    save_file({}, path)
    with SafetensorsFile(path) as f:
        assert f.names() == [] and f.metadata == {}


def _craft(path: Path, header: Any, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype: str, shape: list[Any], begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_misaligned_tensor_is_copied_correctly(tmp_path: Path):
    want = torch.tensor([1.5, -2.0, 3.25])
    header = json.dumps({"x": _entry("F32", [3], 0, 12)}).encode() + b" "  # odd header length
    assert (8 + len(header)) % 4
    path = _craft(tmp_path / "m.safetensors", header, want.numpy().tobytes())
    with SafetensorsFile(path) as f:
        assert torch.equal(f.tensor("x"), want)


def test_empty_tensor_with_large_dims_is_valid(tmp_path: Path):
    path = _craft(tmp_path / "z.safetensors", {"z": _entry("F32", [0, 2**20, 2**20], 0, 0)})
    with SafetensorsFile(path) as f:
        assert f.tensor("z").shape == (0, 2**20, 2**20)


F32x2 = _entry("F32", [2], 0, 8)

# (id, header (object or raw bytes), data, declared header length or None, fragments of message)
BAD: list[tuple[str, Any, bytes, int | None, tuple[str, ...]]] = [
    ("empty_file", None, b"", None, ("0 bytes", "too short")),
    ("truncated_length", None, b"\x01\x02\x03\x04\x05", None, ("5 bytes", "too short")),
    ("header_longer_than_file", {"x": F32x2}, b"\0" * 8, 4096, ("4096", "past the end")),
    ("header_length_absurd", {}, b"", 2**63 + 5, ("absurd",)),
    ("header_length_over_100mb", {}, b"", 100 * 1024 * 1024 + 1, ("absurd",)),
    ("header_not_utf8", b"\xff\xfe{}", b"", None, ("UTF-8",)),
    ("header_not_json", b"{not json", b"", None, ("not valid JSON",)),
    ("header_too_deep", b"[" * 100_000 + b"]" * 100_000, b"", None, ("not valid JSON",)),
    ("header_not_object", [1, 2], b"", None, ("JSON object", "list")),
    ("duplicate_keys", b'{"x": 1, "x": 2}', b"", None, ("duplicate key 'x'",)),
    ("metadata_not_strings", {"__metadata__": {"a": 1}}, b"", None, ("__metadata__",)),
    ("entry_not_object", {"x": [1]}, b"", None, ("'x'", "must be an object")),
    ("missing_dtype", {"x": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     ("'x'", "lacks dtype")),
    ("missing_shape", {"x": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8, None,
     ("'x'", "lacks shape")),
    ("missing_offsets", {"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None,
     ("'x'", "lacks data_offsets")),
    ("unknown_dtype", {"x": _entry("F48", [2], 0, 8)}, b"\0" * 8, None,
     ("'x'", "unknown dtype 'F48'")),
    ("negative_shape", {"x": _entry("F32", [-2], 0, 8)}, b"\0" * 8, None, ("'x'", "non-negative")),
    ("float_shape", {"x": _entry("F32", [2.0], 0, 8)}, b"\0" * 8, None, ("'x'", "integers")),
    ("bool_shape", {"x": _entry("F32", [True], 0, 4)}, b"\0" * 4, None, ("'x'", "integers")),
    ("shape_not_list", {"x": _entry("F32", "2", 0, 8)}, b"\0" * 8, None, ("'x'", "shape")),
    ("offsets_not_pair", {"x": {**F32x2, "data_offsets": [0, 4, 8]}}, b"\0" * 8, None,
     ("'x'", "two integers")),
    ("offsets_not_integers", {"x": _entry("F32", [2], 0, 8.0)}, b"\0" * 8, None,
     ("'x'", "two integers")),
    ("negative_begin", {"x": _entry("F32", [2], -8, 0)}, b"\0" * 8, None, ("'x'", "0 <= begin")),
    ("begin_after_end", {"x": _entry("U8", [0], 8, 4)}, b"\0" * 8, None, ("'x'", "0 <= begin")),
    ("offsets_out_of_range", {"x": _entry("F32", [2], 0, 8)}, b"\0" * 4, None,
     ("'x'", "past the 4-byte data section")),
    ("offsets_huge", {"x": _entry("U8", [2**70], 0, 2**70)}, b"\0" * 8, None, ("'x'", "past the")),
    ("byte_size_disagrees", {"x": _entry("F32", [3], 0, 8)}, b"\0" * 8, None,
     ("'x'", "12 bytes", "hold 8")),
    ("shape_product_overflows", {"x": _entry("F32", [2**40, 2**40], 0, 8)}, b"\0" * 8, None,
     ("'x'", "overflows")),
    ("empty_shape_overflows", {"x": _entry("F32", [0, 2**62, 2**62], 0, 0)}, b"", None,
     ("'x'", "overflows")),
    ("overlapping_tensors", {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)},
     b"\0" * 12, None, ("'b'", "overlap tensor 'a'")),
    ("same_offsets", {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 0, 8)}, b"\0" * 8,
     None, ("overlap",)),
    ("gap_between_tensors", {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)},
     b"\0" * 12, None, ("[4, 8)", "belong to no tensor")),
    ("trailing_data", {"a": _entry("F32", [1], 0, 4)}, b"\0" * 12, None,
     ("[4, 12)", "belong to no tensor")),
]  # fmt: skip


@pytest.mark.parametrize(("header", "data", "length", "fragments"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])  # fmt: skip
def test_malformed_file_gives_a_typed_error_fast(tmp_path, header, data, length, fragments):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(data)
    else:
        _craft(path, header, data, length)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as err:
            SafetensorsFile(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    # nothing sized by a declared number: the deepest header above is 200 KB of brackets
    assert peak < 8 * 1024 * 1024
    msg = str(err.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_bool_tensor_with_bytes_other_than_0_and_1(tmp_path: Path):
    path = _craft(tmp_path / "b.safetensors", {"m": _entry("BOOL", [3], 0, 3)}, b"\x00\x01\x07")
    with SafetensorsFile(path) as f, pytest.raises(CheckpointError, match=r"'m'.*other than 0"):
        f.tensor("m")


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(CheckpointError, match="cannot read"):
        SafetensorsFile(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        SafetensorsFile(tmp_path)


def test_fifo_fails_instead_of_hanging(tmp_path: Path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a regular file"):
        SafetensorsFile(fifo)
    assert time.perf_counter() - start < 1.0
