"""GPTQ bit packing: exact round trips, and the word layout of AutoGPTQ's ``pack`` (written
here from its loops: values little-endian within int32 words; 3-bit values 10 and 21 of every
32 straddling a word boundary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugformer.core.quant import pack as qpack
from plugformer.core.quant.pack import pack, run_length, unpack


def autogptq_pack_rows(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ ``QuantLinear.pack``'s qweight loop: [in, out] uint32 -> [in * bits / 32, out]."""
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # 3 bits: 32 values in 3 words
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.astype(np.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qweight_words_equal_autogptq_pack(bits):
    rng = np.random.default_rng(bits)
    ints = rng.integers(0, 2**bits, size=(64, 24)).astype(np.uint32)  # [in, out]
    want = autogptq_pack_rows(ints, bits)
    got = pack(torch.from_numpy(ints.astype(np.int64)), bits, dim=0)
    assert got.dtype == torch.int32 and tuple(got.shape) == (64 * bits // 32, 24)
    assert np.array_equal(got.numpy(), want)
    # qzeros pack along the output features with the same loop, transposed
    assert np.array_equal(
        pack(torch.from_numpy(ints.T.astype(np.int64)), bits, dim=1).numpy(), want.T
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape,dim", [((64, 40), 0), ((5, 64), 1), ((2, 96, 3), 1), ((32,), 0)])
def test_round_trip_is_exact(bits, shape, dim):
    if shape[dim] % run_length(bits):
        pytest.skip("not a whole run")
    values = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(1))
    packed = pack(values, bits, dim)
    assert packed.shape[dim] == shape[dim] * bits // 32
    assert torch.equal(unpack(packed, bits, dim), values.to(torch.int32))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_byte_fast_path_equals_the_bit_stream(monkeypatch, bits):
    values = torch.randint(0, 2**bits, (3, 64, 16), generator=torch.Generator().manual_seed(2))
    fast = pack(values, bits, 1)
    monkeypatch.setattr(qpack, "_LITTLE", False)
    assert torch.equal(pack(values, bits, 1), fast)
    assert torch.equal(unpack(fast, bits, 1), values.to(torch.int32))


def test_sign_bit_and_all_ones():
    values = torch.full((8, 4), 15)
    packed = pack(values, 4, 0)
    assert packed.tolist() == [[-1] * 4]  # 0xFFFFFFFF as int32
    assert torch.equal(unpack(packed, 4, 0), values.to(torch.int32))
    sym_zero = pack(torch.full((1, 8), 7), 4, dim=1)  # GPTQ v1's symmetric 4-bit qzeros
    assert sym_zero.item() == 0x77777777


def test_bad_sizes_and_bits():
    with pytest.raises(ValueError, match="bits=5"):
        pack(torch.zeros(32, 1), 5)
    with pytest.raises(ValueError, match="do not fill"):
        pack(torch.zeros(12, 1), 4)
    with pytest.raises(ValueError, match="do not fill"):
        pack(torch.zeros(16, 1), 3)
