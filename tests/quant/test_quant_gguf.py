"""GGUF Q8_0/Q4_0/Q4_1 weights run quantized (QuantLinear, group size 32), with the same
float32 logits as dequantizing them on load, and ggml's exact dequantized values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import plugformer
from plugformer.core.native import build as native
from plugformer.core.quant.linear import QuantLinear

gguf = pytest.importorskip("gguf")
QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 64, 128, 4, 2, 96
IDS = torch.tensor([[1, 17, 42, 9, 5, 50, 3, 77, 8, 64]])


def _write_tiny_llama(path: Path, qtype) -> dict[str, np.ndarray]:
    """A tiny llama GGUF with every linear weight in ``qtype``; returns the written floats
    by GGUF name (q/k rows are random anyway, so no permutation is needed to be consistent)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    for key, vtype, value in [
        ("llama.context_length", VT.UINT32, 128), ("llama.embedding_length", VT.UINT32, HIDDEN),
        ("llama.block_count", VT.UINT32, 2), ("llama.feed_forward_length", VT.UINT32, FFN),
        ("llama.attention.head_count", VT.UINT32, HEADS),
        ("llama.attention.head_count_kv", VT.UINT32, KV_HEADS),
        ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-5),
    ]:  # fmt: skip
        w.add_key_value(key, value, vtype)
    hd = HIDDEN // HEADS
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(2):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_q.weight": (HEADS * hd, HIDDEN),
            b + "attn_k.weight": (KV_HEADS * hd, HIDDEN),
            b + "attn_v.weight": (KV_HEADS * hd, HIDDEN),
            b + "attn_output.weight": (HIDDEN, HIDDEN),
            b + "ffn_gate.weight": (FFN, HIDDEN), b + "ffn_up.weight": (FFN, HIDDEN),
            b + "ffn_down.weight": (HIDDEN, FFN), b + "attn_norm.weight": (HIDDEN,),
            b + "ffn_norm.weight": (HIDDEN,),
        }  # fmt: skip
    written = {}
    for name, shape in shapes.items():
        data = (rng.standard_normal(shape) * (0.1 if len(shape) == 2 else 1)).astype(np.float32)
        kind = qtype if len(shape) == 2 and name != "token_embd.weight" else QT.F32
        if kind == QT.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        written[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1], ids=lambda t: t.name)
def test_ggml_blocks_run_quantized_with_the_float_path_logits(tmp_path, qtype):
    path = tmp_path / "tiny.gguf"
    written = _write_tiny_llama(path, qtype)
    # bfloat16 keeps the blocks quantized (float32 on the CPU loads them dense)
    engine = plugformer.Engine.from_overrides([f"model.path={path}", "model.dtype=bfloat16"])
    layers = {n: m for n, m in engine.model.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 14
    m = layers["layers.1.mlp.down"]
    assert (m.bits, m.group_size) == ((8, 32) if qtype == QT.Q8_0 else (4, 32))
    assert m.zero_format == ("float" if qtype == QT.Q4_1 else "gptq")
    # ggml's dequantization (the gguf package's reference), exactly
    blocks = gguf.quants.quantize(written["blk.1.ffn_down.weight"], qtype)
    want = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).copy())
    assert torch.equal(m.dequantize(), want)
    x = torch.randn(3, m.in_features)
    m.set_backend("dequant")  # float32 activations: exactly the dequantized matmul
    torch.testing.assert_close(m(x), x @ want.t(), atol=0, rtol=0)

    dense = plugformer.Engine.from_overrides([f"model.path={path}"])  # float32: dense layers
    assert not any(isinstance(m, QuantLinear) for m in dense.model.modules())
    torch.testing.assert_close(dense.model.get_submodule("layers.1.mlp.down").weight, want)
    floats = plugformer.Engine.from_overrides([f"model.path={path}", "quant.dequantize=true"])
    assert torch.equal(dense.logits(IDS), floats.logits(IDS))


@pytest.mark.parametrize("kernel", ["auto", "torch_int4", "native"])
def test_bf16_runs_a_packed_kernel(tmp_path, kernel):
    if kernel == "native" and not native.available():
        pytest.skip(f"native kernel: {native.unavailable_reason()}")
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path, QT.Q4_1)
    engine = plugformer.Engine.from_overrides(
        [f"model.path={path}", "model.dtype=bfloat16", f"linear_kernel={kernel}"]
    )
    reference = plugformer.Engine.from_overrides([f"model.path={path}"]).logits(IDS)
    logits = engine.logits(IDS)
    m = engine.model.get_submodule("layers.0.attn.wq")
    want = kernel if kernel != "auto" else "native" if native.available() else "torch_int4"
    assert m._kernel_names == {(torch.device("cpu"), torch.bfloat16): want}
    # bf16 activations through 2 layers: logits agree to bf16 precision (~1e-2 relative, max
    # 0.03 measured against logits of std 0.8); the native kernel's int8 activations add up to
    # 1/254 of each 32-block's largest value per feature (max 0.08 measured)
    tol = 0.12 if want == "native" else 0.05
    torch.testing.assert_close(logits, reference, rtol=tol, atol=tol)


@pytest.mark.skipif(not native.available(), reason="needs the native kernel (AVX-512 VNNI)")
def test_float32_with_the_native_kernel_keeps_the_blocks_packed(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path, QT.Q4_1)
    dense = plugformer.Engine.from_overrides([f"model.path={path}"])
    packed = plugformer.Engine.from_overrides([f"model.path={path}", "linear_kernel=native"])
    layers = [m for m in packed.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and all(m.backend == "native" for m in layers)
    # float32 everywhere but the int8 activations of the matmuls (up to 1/254 of each
    # 32-block's largest value per feature): max 0.05 measured against logits of std 0.8
    torch.testing.assert_close(packed.logits(IDS), dense.logits(IDS), rtol=0.12, atol=0.12)


def test_other_quantizers_get_float_weights(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path, QT.Q4_1)
    engine = plugformer.Engine.from_overrides(
        [f"model.path={path}", "quant=rtn", "quant.bits=8", "quant.group_size=32"]
    )
    layers = [m for m in engine.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and all(m.bits == 8 and m.zero_format == "gptq" for m in layers)


def test_int8_head_runs_the_int8_kernel(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama(path, QT.Q4_1)
    base = [f"model.path={path}", "model.dtype=bfloat16"]
    plain = plugformer.Engine.from_overrides(base)
    engine = plugformer.Engine.from_overrides([*base, "quant.head_bits=8"])
    head = engine.model.get_submodule("head")
    assert isinstance(head, QuantLinear) and (head.bits, head.groups) == (8, 1)
    logits = engine.logits(IDS)
    want = "native" if native.available() else "torch_int8"
    assert head._kernel_names == {(torch.device("cpu"), torch.bfloat16): want}
    # per-row int8 of the head: each weight within one grid step (about row max / 127; half a
    # step of rounding plus the float16 scale's) of the float one
    w = plain.model.get_submodule("head").weight.float()
    step = w.abs().amax(dim=1, keepdim=True) / 127
    err = (head.dequantize() - w).abs()
    assert (err <= step).all() and err.mean() < step.mean() / 3
    torch.testing.assert_close(logits, plain.logits(IDS), rtol=0.12, atol=0.12)
    with pytest.raises(plugformer.RefusedError, match=r"quant\.head_bits=4"):
        plugformer.Engine.from_overrides([*base, "quant.head_bits=4"])
