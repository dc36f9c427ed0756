"""The GPTQ checkpoint layout, field by field: a model we quantize saves and loads back to
identical logits; a checkpoint packed by hand the way transformers/AutoGPTQ lay it out loads
and matches transformers running the same weights dequantized; bad files are refused before
any weights are read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_quant_pack import autogptq_pack_rows

import plugformer
from plugformer.core.errors import CheckpointError, ConfigError
from plugformer.core.quant.linear import QuantLinear
from plugformer.core.quant.pack import pack, unpack
from plugformer.core.quant.save import save_quantized

transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[1, 17, 42, 99, 5, 150, 3, 77, 8, 64, 12, 31]])
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_hf_llama):
    model = tiny_hf_llama()  # the shared tiny Llama of conftest.py, as it is
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path, safe_serialization=True)
    _char_tokenizer().save(str(path / "tokenizer.json"))  # calibration text needs a tokenizer
    return model, path


def _char_tokenizer():
    """One token per printable ASCII character (a BPE without merges), 97 ids."""
    from tokenizers import Tokenizer, models

    chars = ["[UNK]", "\n", *map(chr, range(32, 127))]
    return Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, [], unk_token="[UNK]"))


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory):
    """GPTQ 4-bit, act-order, asymmetric, saved by plugformer."""
    _, path = tiny
    engine = plugformer.Engine.from_overrides(
        [f"model.path={path}", "quant=gptq", "quant.group_size=32", "quant.desc_act=true",
         "quant.sym=false", "quant.nsamples=8", "quant.seqlen=64"]
    )  # fmt: skip
    out = save_quantized(engine, tmp_path_factory.mktemp("gptq"))
    return engine, out


def test_saved_directory_has_the_gptq_layout(quantized):
    _, out = quantized
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False,
    }  # fmt: skip
    # asymmetric: v2 (GPTQModel refuses asymmetric v1 files that it did not write itself)
    assert qc["checkpoint_format"] == qc["format"] == "gptq_v2" and qc["pack_dtype"] == "int32"
    assert qc["meta"]["quantizer"] == [f"plugformer:{plugformer.__version__}"]
    theirs = transformers.GPTQConfig.from_dict(qc)  # transformers validates it as its own
    assert (theirs.bits, theirs.group_size, theirs.sym, theirs.desc_act) == (4, 32, False, True)
    assert theirs.format == "gptq_v2"
    assert config["architectures"] == ["LlamaForCausalLM"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        p = "model.layers.1.mlp.down_proj."
        assert {p + s for s in ("qweight", "qzeros", "scales", "g_idx")} <= names
        assert p + "weight" not in names
        assert f.get_slice(p + "qweight").get_shape() == [128 * 4 // 32, 64]
        assert f.get_slice(p + "qzeros").get_shape() == [128 // 32, 64 * 4 // 32]
        assert f.get_slice(p + "scales").get_shape() == [128 // 32, 64]
        assert f.get_slice(p + "g_idx").get_shape() == [128]
        assert str(f.get_slice(p + "qweight").get_dtype()) == "I32"
        assert str(f.get_slice(p + "scales").get_dtype()) == "F16"
        assert "model.embed_tokens.weight" in names and "lm_head.weight" in names


def test_saved_model_loads_back_to_identical_logits(quantized):
    engine, out = quantized
    loaded = plugformer.Engine.from_overrides([f"model.path={out}"])
    assert torch.equal(loaded.logits(IDS), engine.logits(IDS))
    before = dict(engine.model.named_modules())
    for name, m in loaded.model.named_modules():
        if isinstance(m, QuantLinear):
            assert torch.equal(m.g_idx, before[name].g_idx)  # act-order survives
            assert torch.equal(m.qweight, before[name].qweight)
    assert sum(isinstance(m, QuantLinear) for m in loaded.model.modules()) == 14


def test_asymmetric_v2_stores_the_zero_points_and_v1_stores_them_minus_one(quantized, tmp_path):
    engine, out = quantized
    layer = engine.model.get_submodule(_our_path(engine, "model.layers.1.mlp.down_proj"))
    zeros = layer.zero_points()  # [4 groups, 64]
    assert layer.zero_format == "gptq" and zeros.min() >= 1 and zeros.max() <= 15
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        v2 = f.get_tensor("model.layers.1.mlp.down_proj.qzeros")
    assert torch.equal(unpack(v2, 4, dim=1), zeros)
    v1_dir = save_quantized(engine, tmp_path / "v1", checkpoint_format="gptq")
    assert json.loads((v1_dir / "config.json").read_text())["quantization_config"][
        "checkpoint_format"
    ] == "gptq"  # fmt: skip
    with safe_open(str(v1_dir / "model.safetensors"), "pt") as f:
        v1 = f.get_tensor("model.layers.1.mlp.down_proj.qzeros")
    assert torch.equal(unpack(v1, 4, dim=1), zeros - 1)
    logits = engine.logits(IDS)
    for d in (out, v1_dir):
        assert torch.equal(
            plugformer.Engine.from_overrides([f"model.path={d}"]).logits(IDS), logits
        )
    with pytest.raises(ConfigError, match="checkpoint_format: 'gptq_v3' is not supported"):
        save_quantized(engine, tmp_path / "bad", checkpoint_format="gptq_v3")


def test_symmetric_layers_are_written_as_gptq_v1(tiny, tmp_path):
    _, path = tiny
    engine = plugformer.Engine.from_overrides(
        [f"model.path={path}", "quant=rtn", "quant.bits=4", "quant.group_size=32"]
    )
    out = save_quantized(engine, tmp_path / "sym")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["sym"], qc["checkpoint_format"], qc["format"]) == (True, "gptq", "gptq")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = unpack(f.get_tensor("model.layers.0.self_attn.q_proj.qzeros"), 4, dim=1)
    assert stored.unique().tolist() == [7]  # symmetric 4-bit zero point 8, minus one


def _our_path(engine, hf_prefix):
    return engine.family.tensor_name(hf_prefix + ".weight")[: -len(".weight")]


# GPTQModel writes v1 by subtracting a 1 in every field from whole int32 words, so a zero
# point of 0 borrows from the next field; the words below are that, worked out by hand
@pytest.mark.parametrize(
    "bits,word,zeros",
    [
        (4, -168763585, [0, 5, 0, 15, 1, 0, 7, 0]),  # 0x0701F050 - 0x11111111 = 0xF5F0DF3F
        (8, -14593, [0, 200, 0, 1]),  # 0x0100C800 - 0x01010101 = 0xFFFFC6FF
        (2, -1104122633, [0, 3, 0, 1, 2, 0, 0, 3, 1, 1, 0, 2, 3, 0, 1, 0]),  # 0xBE306CF7
    ],
)
def test_gptq_v1_zero_points_of_zero_read_as_gptqmodel_writes_them(bits, word, zeros):
    m = QuantLinear(32, len(zeros), bits, 32, sym=False, zero_format="gptq")
    m.qzeros = torch.tensor([[word]], dtype=torch.int32)
    assert m.zero_points().tolist() == [zeros]
    # every zero point at least 1: the same as adding 1 to each field (AutoGPTQ, vLLM)
    plus_one = [max(z, 1) for z in zeros]
    m.qzeros = pack(torch.tensor([plus_one]) - 1, bits, dim=1)
    assert m.zero_points().tolist() == [plus_one]


def test_gptq_v1_3bit_zero_point_of_zero_wraps_per_field():
    m = QuantLinear(32, 32, 3, 32, sym=False, zero_format="gptq")
    stored = torch.tensor([[7, 0, 3, 6] * 8])  # GPTQModel: (zero - 1) mod 8 per field
    m.qzeros = pack(stored, 3, dim=1)
    assert m.zero_points().tolist() == [[0, 1, 4, 7] * 8]


def test_a_quantized_checkpoint_refuses_another_quantizer(quantized):
    _, out = quantized
    with pytest.raises(ConfigError, match=r"already quantized .* runs as it is with quant=none"):
        plugformer.Engine.from_overrides([f"model.path={out}", "quant=rtn"])


# -- a checkpoint packed by hand, as transformers / AutoGPTQ write it --------------------------
def _pack_by_hand(w: torch.Tensor, bits: int, group_size: int, fmt: str = "gptq"):
    """Asymmetric RTN of w [out, in] and AutoGPTQ's packing: (tensors, dequantized weight).
    ``fmt="gptqmodel"``: some rows non-negative, so that zero points of 0 occur, written as
    GPTQModel writes v1 (``checkpoint_format: gptq``): the v2 words minus a 1 in every field."""
    out_f, in_f = w.shape
    maxq = 2**bits - 1
    if fmt == "gptqmodel":
        w = w.clone()
        w[::3] = w[::3].abs()
    wg = w.reshape(out_f, in_f // group_size, group_size)
    lo = wg.min(-1).values.clamp(max=0)
    hi = wg.max(-1).values.clamp(min=0)
    scale = ((hi - lo) / maxq).half()  # [out, groups]
    zero = torch.round(-lo / scale.float()).clamp(0 if fmt == "gptqmodel" else 1, maxq)
    q = torch.clamp(torch.round(wg / scale.float()[..., None]) + zero[..., None], 0, maxq)
    deq = (scale.float()[..., None] * (q - zero[..., None])).reshape(out_f, in_f)
    ints = q.reshape(out_f, in_f).t().numpy().astype(np.uint32)  # [in, out]
    stored = (zero - (1 if fmt == "gptq" else 0)).t().numpy().astype(np.uint32)  # [groups, out]
    qzeros = torch.from_numpy(autogptq_pack_rows(stored.T.copy(), bits).T.copy())
    if fmt == "gptqmodel":
        assert (zero == 0).any() and bits in (2, 4, 8)
        ones = sum(1 << (bits * j) for j in range(32 // bits))
        qzeros = torch.from_numpy(
            ((qzeros.numpy().astype(np.int64) - ones) % 2**32).astype(np.uint32).view(np.int32)
        )
    tensors = {
        "qweight": torch.from_numpy(autogptq_pack_rows(ints, bits)),
        "qzeros": qzeros,
        "scales": scale.t().contiguous(),
        "g_idx": torch.arange(in_f, dtype=torch.int32) // group_size,
    }
    return tensors, deq


def _write_hand_packed(tiny, path: Path, bits=4, group_size=32, fmt="gptq", **qc_extra):
    model, src = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deq_state = dict(state)
    tensors = {}
    for name, t in state.items():
        prefix = name[: -len("weight")]
        if name.endswith(".weight") and any(f".{p}." in name for p in PROJ):
            packed, deq = _pack_by_hand(t, bits, group_size, fmt)
            tensors.update({prefix + k: v for k, v in packed.items()})
            deq_state[name] = deq
        else:
            tensors[name] = t
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False,
        "sym": False, "checkpoint_format": "gptq" if fmt == "gptqmodel" else fmt,
        "damp_percent": 0.1, **qc_extra,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    return deq_state


@pytest.mark.parametrize(
    "bits,fmt",
    [(4, "gptq"), (8, "gptq"), (3, "gptq"), (4, "gptq_v2"), (4, "gptqmodel"), (2, "gptqmodel")],
)
def test_hand_packed_checkpoint_matches_transformers_on_dequantized_weights(
    tiny, tmp_path, bits, fmt
):
    model, _ = tiny
    deq_state = _write_hand_packed(tiny, tmp_path / "ck", bits=bits, fmt=fmt)
    oracle = transformers.LlamaForCausalLM(model.config).eval()
    oracle.load_state_dict(deq_state)
    engine = plugformer.Engine.from_overrides([f"model.path={tmp_path / 'ck'}"])
    assert sum(isinstance(m, QuantLinear) for m in engine.model.modules()) == 14
    with torch.no_grad():
        expected = oracle(IDS).logits
    # fp32 on CPU, the same weights: transformers' default fp32 tolerances
    torch.testing.assert_close(engine.logits(IDS), expected)


def _corrupt(tiny, tmp_path, edit=None, **qc):
    _write_hand_packed(tiny, tmp_path / "ck", **qc)
    if edit is not None:
        path = tmp_path / "ck" / "model.safetensors"
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        edit(tensors)
        save_file(tensors, str(path))
    return tmp_path / "ck"


def _set_qc(path: Path, **changes):
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(config))


QW = "model.layers.0.self_attn.q_proj."


@pytest.mark.parametrize(
    "change,message",
    [
        ({"quant_method": "awq"}, "quant_method 'awq' is not supported (supported: gptq)"),
        ({"bits": 5}, "bits=5 is not supported (supported: 2, 3, 4, 8)"),
        ({"bits": 8}, f"{QW}qweight has shape [8, 64]; 8-bit GPTQ packing of 64 -> 64 "
                      "features with group_size=32 needs [16, 64]"),
        ({"group_size": 48}, "layer model.layers.0.self_attn.q_proj (64 -> 64): group_size=48 "
                             "does not divide in_features=64"),
        ({"checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not supported"),
        ({"pack_dtype": "int16"}, "pack_dtype 'int16' is not supported"),
    ],
)  # fmt: skip
def test_bad_quantization_config_is_refused(tiny, tmp_path, change, message):
    path = _corrupt(tiny, tmp_path)
    _set_qc(path, **change)
    with pytest.raises(CheckpointError) as info:
        plugformer.Engine.from_overrides([f"model.path={path}"])
    assert message in str(info.value)


def test_qweight_shape_inconsistent_with_bits(tiny, tmp_path):
    def widen(t):
        t[QW + "qweight"] = torch.zeros(16, 64, dtype=torch.int32)

    path = _corrupt(tiny, tmp_path, widen)
    with pytest.raises(
        CheckpointError,
        match=r"q_proj.qweight has shape \[16, 64\]; 4-bit GPTQ "
        r"packing of 64 -> 64 features with group_size=32 needs \[8, 64\]",
    ):
        plugformer.Engine.from_overrides([f"model.path={path}"])


def test_g_idx_out_of_range(tiny, tmp_path):
    def bad(t):
        t[QW + "g_idx"][3] = 2

    path = _corrupt(tiny, tmp_path, bad)
    with pytest.raises(CheckpointError, match=r"q_proj.g_idx holds 2, outside the 2 groups"):
        plugformer.Engine.from_overrides([f"model.path={path}"])


def test_missing_and_mistyped_tensors(tiny, tmp_path):
    def edit(t):
        del t[QW + "qzeros"]
        t["model.layers.1.mlp.up_proj.qweight"] = t["model.layers.1.mlp.up_proj.qweight"].long()

    path = _corrupt(tiny, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        plugformer.Engine.from_overrides([f"model.path={path}"])
    assert f"{QW}qzeros is missing" in str(info.value)
    assert "up_proj.qweight has dtype torch.int64, expected torch.int32" in str(info.value)


def test_missing_g_idx_defaults_to_sequential_groups(tiny, tmp_path):
    def drop(t):
        for k in [k for k in t if k.endswith("g_idx")]:
            del t[k]

    reference = plugformer.Engine.from_overrides([f"model.path={_corrupt(tiny, tmp_path)}"])
    path = _corrupt(tiny, tmp_path / "b", drop)
    engine = plugformer.Engine.from_overrides([f"model.path={path}"])
    assert torch.equal(engine.logits(IDS), reference.logits(IDS))


def test_cli_quantize_with_gptq_writes_a_loadable_directory(tiny, tmp_path, capsys):
    from plugformer.core.cli import main

    _, path = tiny
    out = tmp_path / "out"
    args = [f"model.path={path}", "quant=gptq", "quant.group_size=32", "quant.nsamples=4",
            "quant.seqlen=32"]  # fmt: skip
    assert main(["quantize", *args, f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("quantized 14 linear layers (4-bit, group_size=32, asym, act-")
    engine = plugformer.Engine.from_overrides([f"model.path={out}"])
    assert sum(isinstance(m, QuantLinear) for m in engine.model.modules()) == 14
    assert (out / "tokenizer.json").is_file()
