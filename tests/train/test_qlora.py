"""QLoRA: adapters over plugformer's own quantized layers (GPTQ, RTN int4/int8, GGUF Q4_0,
Q4_1 and Q8_0 blocks), the base kept packed, gradients through a sliced dequantizing backward.

Oracle: the same adapter over a dense layer holding the dequantized weight. Tolerance: the
sliced matmuls sum each output in the same order as the dense GEMM, but BLAS may block a
smaller matrix differently, so float32 results agree to ~1e-6 relative (asserted at 1e-5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer.core.adapters.layer import AdaptedLinear
from plugformer.core.quant import grad
from plugformer.core.quant.grad import quant_linear
from plugformer.core.quant.linear import QuantLinear
from plugformer.core.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from test_quant_gguf import QT, _write_tiny_llama

TEXT = Path(__file__).resolve().parents[1] / "data" / "heldout_en.txt"


def _gguf_layers(tmp_path: Path, qtype) -> dict[str, QuantLinear]:
    path = tmp_path / f"{qtype.name}.gguf"
    _write_tiny_llama(path, qtype)
    engine = plugformer.Engine.from_overrides([f"model.path={path}", "model.dtype=bfloat16"])
    return {n: m for n, m in engine.model.named_modules() if isinstance(m, QuantLinear)}


def _rtn_layers(bits: int, group: int) -> dict[str, QuantLinear]:
    engine = plugformer.Engine.from_overrides(
        ["model=tiny", "quant=rtn", f"quant.bits={bits}", f"quant.group_size={group}"]
    )
    return {n: m for n, m in engine.model.named_modules() if isinstance(m, QuantLinear)}


def _check_layer(m: QuantLinear, slices: int) -> None:
    w = m.dequantize(torch.float32)  # [out, in]
    x = torch.randn(2, 5, m.in_features, requires_grad=True)
    y = quant_linear(m, x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.linear(ref_x, w, None if m.bias is None else m.bias.float())
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    assert x.grad is not None and ref_x.grad is not None
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)
    assert len(grad._slices(m)) == slices


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("small_slices", [False, True], ids=["one-slice", "many-slices"])
def test_gguf_blocks_backward_equals_the_dequantized_layer(
    qtype, small_slices, tmp_path, monkeypatch
):
    if small_slices:  # 32 output rows a slice: every slice boundary exercised
        monkeypatch.setattr(grad, "SLICE_ELEMENTS", 32 * 32)
    layers = _gguf_layers(tmp_path, qtype)
    for name in ("layers.0.attn.wq", "layers.1.mlp.down", "layers.1.mlp.up"):
        m = layers[name]
        _check_layer(m, -(-m.out_features // 32) if small_slices else 1)


@pytest.mark.parametrize(("bits", "group"), [(4, 32), (8, 64), (4, -1)])
def test_rtn_layers_backward_equals_the_dequantized_layer(bits, group):
    for m in list(_rtn_layers(bits, group).values())[:3]:
        _check_layer(m, 1)


def test_qlora_training_equals_lora_on_the_dequantized_model(tmp_path):
    """One QLoRA step over RTN int4 layers equals one LoRA step over dense layers holding the
    dequantized weights: the same loss and the same adapter after the step."""
    common = [
        "model=tiny", f"train.data={TEXT}", "train.seq_len=32", "train.batch_size=2",
        "train.eval_fraction=0", "train.progress=false", "adapter=lora",
        "adapter.target_modules=all-linear", "train.lr=1e-2", "schedule=constant",
    ]  # fmt: skip
    q = Trainer(plugformer.compose([*common, "quant=rtn", "quant.bits=4", "quant.group_size=32",
                                    f"train.output_dir={tmp_path / 'q'}"]))  # fmt: skip
    d = Trainer(plugformer.compose([*common, f"train.output_dir={tmp_path / 'd'}"]))
    adapted = {n: m for n, m in q.module.named_modules() if isinstance(m, AdaptedLinear)}
    assert len(adapted) == 14 and all(isinstance(m.base, QuantLinear) for m in adapted.values())
    dense_layers = [
        n
        for n, m in q.module.named_modules()
        if type(m) is torch.nn.Linear and ".adapters." not in n  # the adapter's own A and B
    ]
    assert dense_layers in ([], ["head"])  # no dense copy of any adapted layer
    with torch.no_grad():  # the dense model gets the quantized weights, and the same adapter
        for name, m in adapted.items():
            dense = d.module.get_submodule(name)
            dense.base.weight.copy_(m.base.dequantize())
        ours = dict(q.module.named_parameters())
        for n, p in d.module.named_parameters():
            if p.requires_grad:
                p.copy_(ours[n])
    lq, ld = q.step()["loss"], d.step()["loss"]
    assert lq == pytest.approx(ld, rel=1e-5)
    dense = dict(d.module.named_parameters())
    for n, p in q.module.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, dense[n], rtol=1e-5, atol=1e-5)


def test_the_default_model_trains_a_lora_on_its_q4_1_blocks(smollm2_gguf, tmp_path):
    """plugformer train adapter=lora on the default SmolLM2 Q4_1 file, out of the box: the
    blocks stay packed (Q4_1: 4-bit with float offsets), the loss goes down."""
    data = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "Who are you?"},
             {"role": "assistant", "content": "I am a pirate, arr!"}]  # fmt: skip
    data.write_text((json.dumps({"messages": turns}) + "\n") * 8)
    trainer = Trainer(
        plugformer.compose(
            [
                "adapter=lora",
                f"train.data={data}",
                "train.seq_len=64",
                "train.batch_size=2",
                "train.eval_fraction=0",
                "train.lr=5e-3",
                "train.progress=false",
                f"train.output_dir={tmp_path / 'run'}",
                "schedule=constant",
            ]
        )
    )
    bases = [m.base for m in trainer.module.modules() if isinstance(m, AdaptedLinear)]
    assert len(bases) == 60  # q_proj and v_proj of 30 layers
    assert all(isinstance(b, QuantLinear) and b.zero_format == "float" for b in bases)
    losses = [trainer.step()["loss"] for _ in range(4)]
    assert losses[-1] < losses[0]
