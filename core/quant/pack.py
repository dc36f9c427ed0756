"""Bit packing of the GPTQ checkpoint layout (AutoGPTQ, GPTQModel, transformers, vLLM).

GPTQ stores ``bits``-wide unsigned integers as a little-endian bit stream cut into 32-bit words:
value ``j`` of a run starts at bit ``bits * j`` of the stream, bit 0 being the lowest bit of the
first word. For 2, 4 and 8 bits a word holds 16, 8 or 4 whole values; for 3 bits 32 values
fill 3 words and values 10 and 21 straddle a word boundary (AutoGPTQ's ``pack`` writes exactly
this). Words are stored as ``int32`` (the same bits, read as two's complement).

* ``qweight`` [in_features * bits / 32, out_features]: packed along the input features (dim 0);
* ``qzeros`` [groups, out_features * bits / 32]: packed along the output features (dim 1).
"""

from __future__ import annotations

import math
import sys

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def run_length(bits: int) -> int:
    """Values in the shortest run that fills whole words (8 for 4-bit, 32 for 3-bit)."""
    return 32 // math.gcd(32, bits)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported (supported: 2, 3, 4, 8)")


def pack(values: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Pack unsigned ``bits``-wide integers along ``dim`` into int32 words.

    ``values.shape[dim]`` must be a multiple of :func:`run_length`; returns the same shape with
    that dimension times ``bits / 32``."""
    _check_bits(bits)
    if bits != 3 and _LITTLE:
        return _pack_bytes(values, bits, dim)
    n_run = run_length(bits)
    words_per_run = n_run * bits // 32
    v = values.movedim(dim, -1).to(torch.int64)
    n = v.shape[-1]
    if n % n_run:
        raise ValueError(f"{n} values do not fill whole {bits}-bit runs of {n_run}")
    v = (v & ((1 << bits) - 1)).reshape(*v.shape[:-1], n // n_run, n_run)
    words = torch.zeros(*v.shape[:-1], words_per_run, dtype=torch.int64, device=v.device)
    for j in range(n_run):
        offset = bits * j
        idx, shift = divmod(offset, 32)
        words[..., idx] |= v[..., j] << shift
        if shift + bits > 32:  # the value's high bits spill into the next word (3-bit only)
            words[..., idx + 1] |= v[..., j] >> (32 - shift)
    words = words & 0xFFFFFFFF
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.reshape(*v.shape[:-2], n * bits // 32).movedim(-1, dim).contiguous()


def unpack(packed: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words along ``dim`` -> unsigned values (int32)."""
    _check_bits(bits)
    if bits != 3 and _LITTLE:
        return _unpack_bytes(packed, bits, dim)
    n_run = run_length(bits)
    words_per_run = n_run * bits // 32
    w = packed.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    n_words = w.shape[-1]
    if n_words % words_per_run:
        raise ValueError(f"{n_words} words do not hold whole {bits}-bit runs")
    w = w.reshape(*w.shape[:-1], n_words // words_per_run, words_per_run)
    mask = (1 << bits) - 1
    out = torch.empty(*w.shape[:-1], n_run, dtype=torch.int64, device=w.device)
    for j in range(n_run):
        idx, shift = divmod(bits * j, 32)
        v = w[..., idx] >> shift
        if shift + bits > 32:
            v = v | (w[..., idx + 1] << (32 - shift))
        out[..., j] = v & mask
    out = out.reshape(*w.shape[:-2], n_words // words_per_run * n_run)
    return out.to(torch.int32).movedim(-1, dim).contiguous()


# 2, 4 and 8 bits never straddle a byte: on little-endian machines a word is 4 bytes, each
# holding 8 / bits values lowest bits first, so packing is byte arithmetic and a dtype view
# (about 30x faster than the general bit-stream loop above, which stays the reference).
_LITTLE = sys.byteorder == "little"


def _split(t: torch.Tensor, dim: int) -> tuple[int, int, int]:
    dim = dim % t.dim()
    return math.prod(t.shape[:dim]), t.shape[dim], math.prod(t.shape[dim + 1 :])


def _pack_bytes(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    per_byte = 8 // bits
    a, n, b = _split(values, dim)
    if n % (4 * per_byte):
        raise ValueError(f"{n} values do not fill whole {bits}-bit runs of {4 * per_byte}")
    v = (values & ((1 << bits) - 1)).to(torch.uint8).reshape(a, n // 4 // per_byte, 4, per_byte, b)
    byte = v[:, :, :, 0].clone()  # [a, words, 4, b]
    for j in range(1, per_byte):
        byte |= v[:, :, :, j] << (bits * j)
    words = byte.transpose(2, 3).reshape(a, -1, b * 4).contiguous().view(torch.int32)
    shape = list(values.shape)
    shape[dim] = n * bits // 32
    return words.reshape(shape)


def _unpack_bytes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    per_byte = 8 // bits
    a, w, b = _split(packed, dim)
    byte = packed.to(torch.int32).reshape(a, w, b).contiguous().view(torch.uint8)
    byte = byte.reshape(a, w, b, 4)
    byte = byte.transpose(2, 3)  # [a, words, 4, b]
    mask = (1 << bits) - 1
    parts = [(byte >> (bits * j)) & mask for j in range(per_byte)] if per_byte > 1 else [byte]
    out = torch.stack(parts, dim=3).to(torch.int32)  # [a, words, 4, per_byte, b]
    shape = list(packed.shape)
    shape[dim] = w * 32 // bits
    return out.reshape(shape)


def gptq_v1_zero_points(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points [groups, out] (int32) of GPTQ v1 ``qzeros`` [groups, out * bits / 32].

    v1 stores ``zero - 1``, and writers differ only where a zero point is 0. GPTQModel (and
    transformers/optimum, which convert through it) subtract the constant with one value of 1
    in every field from each whole 32-bit word, so a field of 0 borrows from the next field;
    adding the constant back word by word (modulo 2**32) undoes exactly that. For 3 bits,
    whose values straddle words, they shift each field on its own, modulo 8. Where every zero
    point is at least 1 (AutoGPTQ, plugformer) both read as ``field + 1``."""
    _check_bits(bits)
    if bits == 3:
        return (unpack(qzeros, 3, dim=1) + 1) & 0x7
    ones = sum(1 << (bits * j) for j in range(32 // bits))  # 0x11111111 for 4 bits
    words = (qzeros.to(torch.int64) + ones) & 0xFFFFFFFF
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return unpack(words, bits, dim=1)
