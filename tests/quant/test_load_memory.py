"""Loading keeps one copy of the weights: no temporaries stay alive, no parameter views a
bigger buffer, GGUF blocks dequantize straight into the model dtype with the same values, and
dropping a checkpoint map's pages leaves the tensors that view it intact."""

from __future__ import annotations

import gc
import mmap

import pytest
import torch

import plugformer
from plugformer.core import memory
from plugformer.core.checkpoints.gguf_quants import dequantize, dequantize_to
from plugformer.core.native import build as native
from plugformer.core.quant.linear import QuantLinear

gguf = pytest.importorskip("gguf")
from tests.quant.test_quant_gguf import IDS, _write_tiny_llama  # noqa: E402

QT = gguf.GGMLQuantizationType


def _live_storages() -> dict[int, int]:
    """data_ptr -> nbytes of the storage of every tensor the garbage collector can see."""
    found = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


@pytest.fixture
def tiny_q4_1(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path, QT.Q4_1)
    return path


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.dtype=float32"],
        ["model.dtype=bfloat16"],  # Q4_1 layers stay quantized
        ["model.dtype=bfloat16", "quant=rtn", "quant.bits=8"],  # dequantized, then rounded
    ],
    ids=["fp32", "bf16-q4_1", "bf16-rtn8"],
)
def test_loading_leaves_only_the_weights_alive(tiny_q4_1, overrides):
    gc.collect()
    before = _live_storages()
    engine = plugformer.Engine.from_overrides([f"model.path={tiny_q4_1}", *overrides])
    gc.collect()
    state = _state(engine.model)
    weights = {t.untyped_storage().data_ptr() for t in state}
    # the kernels' own layouts (built at load) are weights too (memory.weight_bytes)
    kernels = [t for m in engine.model.modules() if isinstance(m, QuantLinear)
               for t in m.kernel_tensors()]  # fmt: skip
    weights |= {t.untyped_storage().data_ptr() for t in kernels}
    new = {p: n for p, n in _live_storages().items() if p not in before and p not in weights}
    # nothing but the weights was kept: no state dict, no float32 dequantized blocks, no
    # float copy of a quantized layer (a few small tensors, e.g. the tokenizer-free engine's
    # constants, would be tolerated; what loading makes is at least a whole weight)
    smallest_weight = min(t.untyped_storage().nbytes() for t in state if t.dim() == 2)
    assert all(n < smallest_weight for n in new.values()), new
    for t in state:  # each weight owns exactly its bytes: no view into a bigger temporary
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


@pytest.mark.parametrize(
    "overrides,one_copy",
    [
        (["model.dtype=float32", "linear_kernel=native"], True),  # the layout replaces qweight
        (["model.dtype=bfloat16", "linear_kernel=torch_int4"], False),  # beside qweight
    ],
)
def test_kernel_copies_are_counted_as_weights(tiny_q4_1, overrides, one_copy):
    if "linear_kernel=native" in overrides and not native.available():
        pytest.skip(f"native kernel: {native.unavailable_reason()}")
    engine = plugformer.Engine.from_overrides([f"model.path={tiny_q4_1}", *overrides])
    layers = [m for m in engine.model.modules() if isinstance(m, QuantLinear)]
    assert layers  # the Q4_1 layers stay quantized; their kernels are built at load
    total, kernels = memory.weight_bytes(engine.model)
    assert kernels == memory.tensor_bytes([t for m in layers for t in m.kernel_tensors()]) > 0
    assert total == memory.tensor_bytes(_state(engine.model)) + kernels
    assert all(("qweight" in dict(m.named_buffers())) != one_copy for m in layers)
    engine.logits(IDS)  # running adds nothing
    assert memory.weight_bytes(engine.model) == (total, kernels)


def test_tensor_bytes_counts_shared_storages_once():
    big = torch.zeros(100)
    assert memory.tensor_bytes([big, big[:10], big.view(10, 10)]) == 400
    assert memory.tensor_bytes([big[:10].clone(), big]) == 440


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dequantize_to_matches_dequantize_then_cast(kind, dtype):
    qtype = getattr(QT, kind)
    data = torch.randn(40, 256, generator=torch.Generator().manual_seed(0)).numpy()
    blocks = torch.from_numpy(gguf.quants.quantize(data, qtype).copy()).view(-1, 34 if
             kind == "Q8_0" else 18 if kind == "Q4_0" else 20)  # fmt: skip
    want = dequantize(blocks, kind).to(dtype)
    got = dequantize_to(blocks, kind, dtype, chunk=7)  # chunks that do not divide the blocks
    assert got.dtype == dtype and torch.equal(got, want)


def test_gguf_reads_quantized_tensors_straight_into_the_model_dtype(tiny_q4_1):
    from plugformer.plugins.checkpoints.gguf import GGUFCheckpoint

    with GGUFCheckpoint(tiny_q4_1) as ck:
        name = "model.layers.0.self_attn.q_proj.weight"  # q rows are also un-permuted
        want = ck.tensor(name).to(torch.bfloat16)
        got = ck.tensor_as(name, torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_dropped_map_pages_read_back_the_same_bytes(tmp_path):
    path = tmp_path / "data.bin"
    values = torch.arange(4096, dtype=torch.float32)
    path.write_bytes(values.numpy().tobytes())
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    view = torch.frombuffer(mm, dtype=torch.float32)
    assert torch.equal(view, values)
    memory.drop_mapped_pages(mm)
    assert torch.equal(view, values)  # read again from the file
    memory.drop_mapped_pages(None)  # no map: nothing to do


def test_loading_records_the_baseline_before_the_weights(tiny_q4_1):
    memory.marks.clear()
    plugformer.Engine.from_overrides([f"model.path={tiny_q4_1}"])
    # (not compared with the peak: Linux updates its high-water mark lazily)
    assert memory.marks["baseline_rss_mb"] > 0
