"""GGML tensor types and their dequantization (spec: ggml-org/ggml, docs/gguf.md).

F32, F16 and BF16 tensors are read in their own dtype; Q8_0, Q4_0 and Q4_1 blocks of 32 weights
are dequantized to float32 by vectorised torch code with the arithmetic of ggml's reference
(``ggml-quants.c``). Other ggml types are only named, for the error that refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GGMLType:
    """A tensor encoding this reader loads: ``block`` elements take ``block_bytes`` bytes."""

    name: str
    block: int
    block_bytes: int
    dtype: torch.dtype  # the dtype :meth:`plugformer.core.checkpoints.gguf.GGUFFile.tensor` returns


GGML_TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32", 1, 4, torch.float32),
    1: GGMLType("F16", 1, 2, torch.float16),
    30: GGMLType("BF16", 1, 2, torch.bfloat16),
    8: GGMLType("Q8_0", 32, 2 + 32, torch.float32),  # fp16 d, 32 x int8 q: d * q
    2: GGMLType("Q4_0", 32, 2 + 16, torch.float32),  # fp16 d, 32 nibbles: d * (q - 8)
    3: GGMLType("Q4_1", 32, 2 + 2 + 16, torch.float32),  # fp16 d, fp16 m, nibbles: d * q + m
}
# Other ggml types, named in the error for a tensor that uses one.
OTHER_TYPE_NAMES = {
    **{6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K"},
    **{14: "Q6_K", 15: "Q8_K", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64"},
    **{28: "F64", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"},
}


def dequantize(blocks: torch.Tensor, kind: str) -> torch.Tensor:
    """Blocks of 32 weights -> float32, with the arithmetic (and rounding) of ggml's reference:
    fp16 scales widened exactly, one float32 multiply, and for Q4_1 a separate add (no FMA)."""
    # blocks: [N, block_bytes] uint8 -> [N, 32] float32
    d = blocks[:, 0:2].view(torch.float16).float()  # [N, 1]
    if kind == "Q8_0":
        return blocks[:, 2:].view(torch.int8).float().mul_(d)
    packed = blocks[:, -16:]  # [N, 16]: low nibbles are weights 0..15, high nibbles 16..31
    q = torch.empty(blocks.shape[0], 32, dtype=torch.float32)  # [N, 32]
    q[:, :16] = packed & 0x0F
    q[:, 16:] = packed >> 4
    if kind == "Q4_0":
        return q.sub_(8.0).mul_(d)
    m = blocks[:, 2:4].view(torch.float16).float()  # [N, 1]
    return q.mul_(d).add_(m)


def dequantize_to(
    blocks: torch.Tensor, kind: str, dtype: torch.dtype, chunk: int = 1 << 15
) -> torch.Tensor:
    """:func:`dequantize` cast to ``dtype``, ``chunk`` blocks at a time: the same values as
    ``dequantize(blocks, kind).to(dtype)`` without a float32 copy of the whole tensor."""
    # blocks: [N, block_bytes] uint8 -> [N, 32] dtype
    if dtype == torch.float32:
        return dequantize(blocks, kind)
    out = torch.empty(blocks.shape[0], 32, dtype=dtype)
    for start in range(0, blocks.shape[0], chunk):
        out[start : start + chunk] = dequantize(blocks[start : start + chunk], kind)
    return out
