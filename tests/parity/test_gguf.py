"""The GGUF checkpoint plugin: values equal the ``gguf`` package's reference dequantization,
metadata of every value type, v2 and v3, Hugging Face names and config, llama's q/k layout
undone exactly, a typed error in under a second for every malformed file, and the real SmolLM2
file.

The ``gguf`` package only writes test files and serves as the oracle; the plugin reads GGUF with
its own code.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from plugformer.core.checkpoints.gguf import GGUFFile
from plugformer.core.errors import CheckpointError
from plugformer.core.interfaces.checkpoint import Checkpoint, CheckpointFormat
from plugformer.core.registry import Registry
from plugformer.plugins.checkpoints import gguf as plugin
from plugformer.plugins.checkpoints.gguf import GGUFCheckpoint, GGUFConfig, GGUFFormat


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, QT]], arch: str = "llama", **kv: Any):
    """A GGUF v3 file from gguf.GGUFWriter; ``kv`` values are (GGUFValueType, value)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, (vtype, value) in kv.items():
        w.add_key_value(key, value, vtype)
    for name, (data, qtype) in tensors.items():
        if qtype in (QT.F32, QT.F16):
            w.add_tensor(name, gguf.quants.quantize(data, qtype))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _reference(data: np.ndarray, qtype: QT) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).copy())


def _random(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- values -----------------------------------------------------------------------------------
TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantized_values_equal_the_gguf_reference_exactly(tmp_path: Path, qtype: QT):
    # Same arithmetic as gguf.quants (fp16 scales widened exactly, then one float32 multiply, and
    # for Q4_1 a separate add), so equality is exact: tolerance 0.
    data = {"m": _random(6, 96), "t3": _random(2, 3, 64, seed=1), "v": _random(64, seed=2)}
    data["m"][0, :32] = 0.0  # an all-zero block: scale 0
    path = _write(tmp_path / "t.gguf", {k: (v, qtype) for k, v in data.items()})
    f = GGUFFile(path)
    dtype = {QT.F16: torch.float16, QT.BF16: torch.bfloat16}.get(qtype, torch.float32)
    for name, x in data.items():
        got = f.tensor(name)
        assert f.tensors[name].shape == x.shape == tuple(got.shape)
        assert f.tensors[name].type.dtype == got.dtype == dtype
        assert torch.equal(got.float(), _reference(x, qtype)), name
    f.close()


def test_float_tensors_are_memory_mapped_and_outlive_close(tmp_path: Path):
    path = _write(tmp_path / "m.gguf", {"w": (np.arange(64, dtype=np.float32), QT.F32)})
    f = GGUFFile(path)
    a, b = f.tensor("w"), f.tensor("w")
    assert a.data_ptr() == b.data_ptr()  # two views of the one mapping
    a.add_(1)  # copy-on-write: seen through the mapping, never written to the file
    f.close()
    assert b.sum().item() == sum(range(64)) + 64
    with pytest.raises(CheckpointError, match="closed"):
        f.tensor("w")
    assert GGUFFile(path).tensor("w").sum().item() == sum(range(64))


def _metadata_values() -> dict[str, tuple[VT, Any]]:
    return {
        "t.u8": (VT.UINT8, 255),
        "t.i8": (VT.INT8, -128),
        "t.u16": (VT.UINT16, 65535),
        "t.i16": (VT.INT16, -32768),
        "t.u32": (VT.UINT32, 2**32 - 1),
        "t.i32": (VT.INT32, -(2**31)),
        "t.f32": (VT.FLOAT32, 1e-5),
        "t.bool": (VT.BOOL, True),
        "t.str": (VT.STRING, "héllo ✓"),
        "t.u64": (VT.UINT64, 2**64 - 1),
        "t.i64": (VT.INT64, -(2**63)),
        "t.f64": (VT.FLOAT64, 0.1),
        "t.ints": (VT.ARRAY, [1, -2, 3]),
        "t.strs": (VT.ARRAY, ["a", "", "ü"]),
        "t.floats": (VT.ARRAY, [0.5, -1.25]),
        "t.bools": (VT.ARRAY, [True, False]),
        "t.nested": (VT.ARRAY, [[1, 2], [3], [4, 5, 6]]),
        "t.nested_strs": (VT.ARRAY, [["x", "y"], ["z"]]),
    }


@pytest.mark.parametrize("version", [2, 3])
def test_metadata_of_every_value_type_in_v2_and_v3(tmp_path: Path, version: int):
    # v2 and v3 have the same layout (v1 had uint32 counts; v3 only adds big-endian files), so a
    # v2 file is the writer's v3 output with the version field patched.
    kv = _metadata_values()
    path = _write(tmp_path / "kv.gguf", {"w": (_random(4, 32), QT.Q8_0)}, **kv)
    raw = bytearray(path.read_bytes())
    raw[4:8] = struct.pack("<I", version)
    path.write_bytes(bytes(raw))
    f = GGUFFile(path)
    assert f.version == version
    assert f.metadata["general.architecture"] == "llama"
    for key, (vtype, want) in kv.items():
        assert f.value_types[key] == vtype, key
        assert f.metadata[key] == want, key
    # the oracle agrees, field by field (float32 scalars: ours is the shortest exact decimal;
    # GGUFReader.contents() flattens nested arrays, so those were checked against the input only)
    for key, field in gguf.GGUFReader(path).fields.items():
        if not key.startswith(("GGUF.", "t.nested")):
            want = field.contents()
            got = f.metadata[key]
            assert np.float32(got) == np.float32(want) if key == "t.f32" else got == want, key
    assert torch.equal(f.tensor("w"), _reference(_random(4, 32), QT.Q8_0))


def test_empty_arrays_and_custom_alignment(tmp_path: Path):
    body = _kv("a.empty", VT.ARRAY, struct.pack("<IQ", VT.INT32, 0))
    body += _kv("general.alignment", VT.UINT32, struct.pack("<I", 64))
    body += _tinfo("w", [8], QT.F32, 0)
    data = _header(1, 2) + body
    data += b"\0" * (-len(data) % 64) + struct.pack("<8f", *range(8))
    path = tmp_path / "a.gguf"
    path.write_bytes(data)
    f = GGUFFile(path)
    assert f.metadata["a.empty"] == [] and f.alignment == 64 and f.data_offset % 64 == 0
    assert f.tensor("w").tolist() == list(range(8))


# -- Hugging Face view --------------------------------------------------------------------------
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, FFN, VOCAB = 4, 2, 8, 32, 64, 48


def _converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (rows [n_head, 2, d/2] -> [n_head,
    d/2, 2]), written from the converter's formula."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _llama_kv(arch: str = "llama", **extra: Any) -> dict[str, tuple[VT, Any]]:
    kv = {
        f"{arch}.context_length": (VT.UINT32, 256),
        f"{arch}.embedding_length": (VT.UINT32, HIDDEN),
        f"{arch}.block_count": (VT.UINT32, 2),
        f"{arch}.feed_forward_length": (VT.UINT32, FFN),
        f"{arch}.rope.dimension_count": (VT.UINT32, HEAD_DIM),
        f"{arch}.attention.head_count": (VT.UINT32, HEADS),
        f"{arch}.attention.head_count_kv": (VT.UINT32, KV_HEADS),
        f"{arch}.attention.layer_norm_rms_epsilon": (VT.FLOAT32, 1e-5),
        f"{arch}.rope.freq_base": (VT.FLOAT32, 100000.0),
        "tokenizer.ggml.bos_token_id": (VT.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (VT.UINT32, 2),
    }
    kv.update(extra)
    return kv


def _hf_llama(seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
    """HF-layout tensors of a tiny two-layer llama, by HF name."""
    r = iter(range(seed, seed + 100))
    t = {"model.embed_tokens.weight": _random(VOCAB, HIDDEN, seed=next(r))}
    t["model.norm.weight"] = _random(HIDDEN, seed=next(r))
    if not tied:
        t["lm_head.weight"] = _random(VOCAB, HIDDEN, seed=next(r))
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = _random(HEADS * HEAD_DIM, HIDDEN, seed=next(r))
        t[p + "self_attn.k_proj.weight"] = _random(KV_HEADS * HEAD_DIM, HIDDEN, seed=next(r))
        t[p + "self_attn.v_proj.weight"] = _random(KV_HEADS * HEAD_DIM, HIDDEN, seed=next(r))
        t[p + "self_attn.o_proj.weight"] = _random(HIDDEN, HEADS * HEAD_DIM, seed=next(r))
        t[p + "mlp.gate_proj.weight"] = _random(FFN, HIDDEN, seed=next(r))
        t[p + "mlp.up_proj.weight"] = _random(FFN, HIDDEN, seed=next(r))
        t[p + "mlp.down_proj.weight"] = _random(HIDDEN, FFN, seed=next(r))
        t[p + "input_layernorm.weight"] = _random(HIDDEN, seed=next(r))
        t[p + "post_attention_layernorm.weight"] = _random(HIDDEN, seed=next(r))
    return t


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _to_gguf(hf: dict[str, np.ndarray], qtype: QT = QT.F32) -> dict[str, tuple[np.ndarray, QT]]:
    """What llama.cpp's converter writes: llama.cpp names, q/k rows permuted."""
    out = {}
    for name, w in hf.items():
        if name in GGUF_NAMES:
            gname = GGUF_NAMES[name]
        else:  # model.layers.<i>.<module>.weight
            i, module = name.removeprefix("model.layers.").removesuffix(".weight").split(".", 1)
            gname = f"blk.{i}.{GGUF_NAMES[module]}.weight"
        if ".q_proj." in name:
            w = _converter_permute(w, HEADS)
        elif ".k_proj." in name:
            w = _converter_permute(w, KV_HEADS)
        out[gname] = (w, qtype if w.ndim == 2 else QT.F32)
    return out


def _open(path: Path) -> GGUFCheckpoint:
    return GGUFFormat(GGUFConfig()).open(path)


def _transformers_unpermute(w: np.ndarray, gguf_name: str) -> np.ndarray:
    """transformers' GGUF loader, as the oracle for undoing the q/k permutation."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = {"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS}
    return LlamaTensorProcessor(config=config).process(w, gguf_name).weights


def test_tiny_llama_speaks_hugging_face_and_qk_round_trips(tmp_path: Path):
    hf = _hf_llama()
    path = _write(tmp_path / "llama.gguf", _to_gguf(hf), **_llama_kv())
    ck = _open(path)
    assert isinstance(ck, Checkpoint)
    assert ck.hf_config == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,  # no llama.vocab_size and no token list: token_embd's rows
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 256,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert ck.generation_config == {"bos_token_id": 1, "eos_token_id": 2}
    assert ck.metadata["llama.block_count"] == 2
    assert sorted(ck.tensor_names()) == sorted(hf)
    for name, want in hf.items():
        assert ck.tensor_info(name) == (want.shape, torch.float32), name
        assert torch.equal(ck.tensor(name), torch.from_numpy(want)), name  # q/k: HF layout again
    gguf_k = _converter_permute(hf["model.layers.1.self_attn.k_proj.weight"], KV_HEADS)
    assert np.array_equal(
        _transformers_unpermute(gguf_k, "blk.1.attn_k.weight"),
        hf["model.layers.1.self_attn.k_proj.weight"],
    )
    assert ck.tokenizer() is None  # no tokenizer.ggml.* metadata in this file
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        ck.tensor("nope")
    ck.close()


@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0, QT.Q4_1], ids=lambda t: t.name)
def test_quantized_q_and_k_equal_transformers_gguf_loader(tmp_path: Path, qtype: QT):
    hf = _hf_llama(seed=7, tied=False)
    written = _to_gguf(hf, qtype)
    path = _write(tmp_path / "q.gguf", written, **_llama_kv())
    with _open(path) as ck:
        assert ck.hf_config["tie_word_embeddings"] is False
        for gname, hname in (
            ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
            ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight"),
            ("output.weight", "lm_head.weight"),
        ):
            data, _ = written[gname]
            want = _transformers_unpermute(_reference(data, qtype).numpy(), gname)
            got = ck.tensor(hname)
            assert got.dtype == (torch.float16 if qtype == QT.F16 else torch.float32)
            assert torch.equal(got.float(), torch.from_numpy(np.array(want))), hname


def test_vocab_size_from_metadata_or_token_list(tmp_path: Path):
    tensors = _to_gguf(_hf_llama())
    tokens = (VT.ARRAY, [f"t{i}" for i in range(40)])
    path = _write(tmp_path / "a.gguf", tensors, **_llama_kv(**{"tokenizer.ggml.tokens": tokens}))
    assert _open(path).hf_config["vocab_size"] == 40
    kv = _llama_kv(**{"llama.vocab_size": (VT.UINT32, 44), "tokenizer.ggml.tokens": tokens})
    assert _open(_write(tmp_path / "b.gguf", tensors, **kv)).hf_config["vocab_size"] == 44


def test_qwen2_keeps_its_rows_and_maps_biases(tmp_path: Path):
    hf = _hf_llama(seed=3)
    tensors = {k: v for k, v in _to_gguf(hf).items() if "attn_q" not in k and "attn_k" not in k}
    q, qb = _random(HEADS * HEAD_DIM, HIDDEN, seed=50), _random(HEADS * HEAD_DIM, seed=51)
    tensors |= {"blk.0.attn_q.weight": (q, QT.F32), "blk.0.attn_q.bias": (qb, QT.F32)}
    path = _write(tmp_path / "qwen.gguf", tensors, arch="qwen2", **_llama_kv("qwen2"))
    with _open(path) as ck:
        assert ck.hf_config["architectures"] == ["Qwen2ForCausalLM"]
        assert ck.hf_config["model_type"] == "qwen2"
        assert torch.equal(ck.tensor("model.layers.0.self_attn.q_proj.weight"), torch.tensor(q))
        assert torch.equal(ck.tensor("model.layers.0.self_attn.q_proj.bias"), torch.tensor(qb))


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        ({"llama.rope.scale_linear": (VT.FLOAT32, 2.0)}, {"rope_type": "linear", "factor": 2.0}),
        (
            {
                "llama.rope.scaling.type": (VT.STRING, "yarn"),
                "llama.rope.scaling.factor": (VT.FLOAT32, 4.0),
                "llama.rope.scaling.original_context_length": (VT.UINT32, 64),
            },
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        ),
        ({"llama.rope.scaling.type": (VT.STRING, "none")}, None),
    ],
)
def test_rope_scaling(tmp_path: Path, extra: dict, want: dict | None):
    path = _write(tmp_path / "r.gguf", _to_gguf(_hf_llama()), **_llama_kv(**extra))
    with _open(path) as ck:
        assert ck.hf_config.get("rope_scaling") == want


def test_unsupported_rope_scaling_is_named(tmp_path: Path):
    kv = _llama_kv(**{"llama.rope.scaling.type": (VT.STRING, "longrope")})
    path = _write(tmp_path / "r.gguf", _to_gguf(_hf_llama()), **kv)
    with pytest.raises(CheckpointError, match=r"llama\.rope\.scaling\.type='longrope'"):
        _open(path)


def test_q_rows_that_do_not_split_into_heads(tmp_path: Path):
    tensors = _to_gguf(_hf_llama())
    tensors["blk.0.attn_q.weight"] = (_random(HEADS * HEAD_DIM + 4, HIDDEN), QT.F32)
    path = _write(tmp_path / "q.gguf", tensors, **_llama_kv())
    with pytest.raises(CheckpointError, match=r"'blk\.0\.attn_q\.weight': 36 rows"):
        _open(path)


def test_unknown_architecture_is_named(tmp_path: Path):
    path = _write(tmp_path / "g.gguf", {"w": (_random(32), QT.F32)}, arch="gpt2")
    with pytest.raises(CheckpointError, match=r"general\.architecture='gpt2' is not supported"):
        _open(path)


@pytest.mark.parametrize(
    ("drop", "extra", "fragment"),
    [
        ("llama.embedding_length", {}, "'llama.embedding_length' is missing"),
        ("", {"llama.block_count": (VT.STRING, "two")}, "'llama.block_count' should be int"),
    ],
)
def test_missing_or_mistyped_hyperparameters_are_named(tmp_path, drop, extra, fragment):
    kv = {k: v for k, v in _llama_kv(**extra).items() if k != drop}
    path = _write(tmp_path / "m.gguf", _to_gguf(_hf_llama()), **kv)
    with pytest.raises(CheckpointError, match=fragment) as err:
        _open(path)
    assert str(path) in str(err.value)


def test_two_tensors_with_one_hugging_face_name(tmp_path: Path):
    tensors = _to_gguf(_hf_llama(tied=False))
    tensors["lm_head.weight"] = tensors["output.weight"]
    path = _write(tmp_path / "two.gguf", tensors, **_llama_kv())
    with pytest.raises(
        CheckpointError, match=r"'output\.weight' and 'lm_head\.weight' both map to"
    ):
        _open(path)


def test_unsupported_tokenizer_is_named_with_the_file(tmp_path: Path):
    kv = _llama_kv(**{"tokenizer.ggml.model": (VT.STRING, "bert")})
    path = _write(tmp_path / "t.gguf", _to_gguf(_hf_llama()), **kv)
    with _open(path) as ck, pytest.raises(CheckpointError, match=r"tokenizer\.ggml\.model") as err:
        ck.tokenizer()
    assert str(path) in str(err.value)


def test_detect_and_registration(tmp_path: Path):
    fmt = GGUFFormat(GGUFConfig())
    assert isinstance(fmt, CheckpointFormat) and fmt.check() == []
    assert fmt.detect(_write(tmp_path / "x.gguf", {"w": (_random(32), QT.F32)}))
    (tmp_path / "y.bin").write_bytes(b"GGML" + bytes(20))
    assert not fmt.detect(tmp_path / "y.bin")
    assert not fmt.detect(tmp_path)  # a directory
    assert not fmt.detect(tmp_path / "missing.gguf")
    registry = Registry()
    plugin.plugformer_register(registry)
    entry = registry.get("checkpoint", "gguf")
    assert entry.builder is GGUFFormat and entry.config is GGUFConfig
    assert isinstance(registry.build("checkpoint", GGUFConfig()), GGUFFormat)


# -- malformed files ----------------------------------------------------------------------------
def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _header(n_tensors: int, n_kv: int, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def _tinfo(name: str, ne: list[int], qtype: int, offset: int) -> bytes:
    dims = struct.pack(f"<I{len(ne)}Q", len(ne), *ne)
    return _str(name) + dims + struct.pack("<IQ", qtype, offset)


def _file(kvs=(), infos=(), data: bytes = bytes(64), **hdr: int) -> bytes:
    hdr = {"n_tensors": len(infos), "n_kv": len(kvs)} | hdr
    head = _header(**hdr) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % 32) + data


TWO = [_tinfo("a", [8], QT.F32, 0), _tinfo("b", [8], QT.F32, 32)]  # 32 bytes each
ARCH = _kv("general.architecture", VT.STRING, _str("llama"))


def _nested(depth: int) -> bytes:
    return struct.pack("<IQ", VT.ARRAY, 1) * depth + struct.pack("<IQ", VT.UINT8, 0)


MALFORMED = {
    "empty file": (b"", ["empty file"]),
    "bad magic": (b"GGML" + _file()[4:], ["bad magic", "not a GGUF file"]),
    "truncated header": (b"GGUF\x03\x00\x00\x00\x01", ["truncated", "tensor count"]),
    "version 1": (_file(version=1), ["unsupported GGUF version 1"]),
    "version 4": (_file(version=4), ["unsupported GGUF version 4"]),
    "big-endian": (_file(version=0x03000000), ["big-endian"]),
    "absurd tensor count": (_file(n_tensors=2**64 - 1), ["absurd tensor count"]),
    "absurd kv count": (_file(n_kv=2**40), ["absurd metadata key-value count"]),
    "key length": (_file([struct.pack("<Q", 2**62)], n_kv=1), ["metadata key #0", "runs past"]),
    "string length": (
        _file([_kv("x.s", VT.STRING, struct.pack("<Q", 10**12))]),
        ["metadata key 'x.s'", "string length 1000000000000 runs past the end"],
    ),
    "array length": (
        _file([_kv("x.a", VT.ARRAY, struct.pack("<IQ", VT.INT32, 2**60))]),
        ["metadata key 'x.a'", "array length", "runs past the end"],
    ),
    "string array length": (
        _file([_kv("x.a", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2**59))]),
        ["metadata key 'x.a'", "array length", "runs past the end"],
    ),
    "nested string length": (
        _file([_kv("x.a", VT.ARRAY, struct.pack("<IQ", VT.STRING, 1) + struct.pack("<Q", 999))]),
        ["metadata key 'x.a'[0]", "string length 999"],
    ),
    "arrays nested too deep": (_file([_kv("x.n", VT.ARRAY, _nested(5000))]), ["nested deeper"]),
    "unknown value type": (_file([_kv("x.u", 13, b"")]), ["'x.u'", "unknown metadata value type"]),
    "unknown array type": (
        _file([_kv("x.u", VT.ARRAY, struct.pack("<IQ", 99, 1))]),
        ["'x.u'", "unknown array element type 99"],
    ),
    "bool not 0 or 1": (_file([_kv("x.b", VT.BOOL, b"\x02")]), ["'x.b'", "0 or 1"]),
    "non-ASCII key": (_file([_kv("x.é", VT.UINT8, b"\x00")]), ["metadata key #0", "ASCII"]),
    "duplicate key": (_file([ARCH, ARCH]), ["duplicate metadata key 'general.architecture'"]),
    "bad alignment": (
        _file([_kv("general.alignment", VT.UINT32, struct.pack("<I", 12))]),
        ["general.alignment=12"],
    ),
    "n_dims > 4": (_file(infos=[_tinfo("a", [1] * 5, QT.F32, 0)]), ["'a'", "n_dims=5"]),
    "dims overflow": (
        _file(infos=[_tinfo("a", [2**40, 2**40], QT.F32, 0)]),
        ["'a'", "overflow int64"],
    ),
    "dim beyond int64": (_file(infos=[_tinfo("a", [2**64 - 1], QT.F32, 0)]), ["overflow int64"]),
    "dims exceed the file": (
        _file(infos=[_tinfo("a", [1024, 1024], QT.F32, 0)]),
        ["'a'", "more than the whole file"],
    ),
    "misaligned offset": (_file(infos=[_tinfo("a", [8], QT.F32, 4)]), ["'a'", "misaligned"]),
    "offset beyond the file": (
        _file(infos=[_tinfo("a", [8], QT.F32, 2**40)]),
        ["'a'", "beyond the end of the file"],
    ),
    "data cut short": (_file(infos=TWO, data=bytes(40)), ["'b'", "beyond the end of the file"]),
    "overlapping tensors": (
        _file(infos=[_tinfo("a", [16], QT.F32, 0), _tinfo("b", [8], QT.F32, 32)]),
        ["'a' and 'b' overlap"],
    ),
    "unknown known type": (
        _file(infos=[_tinfo("a", [256], QT.Q4_K, 0)]),
        ["tensor 'a' has type Q4_K (id 12)"],
    ),
    "unknown type id": (_file(infos=[_tinfo("a", [8], 77, 0)]), ["'a'", "unknown (id 77)"]),
    "duplicate tensor": (
        _file(infos=[TWO[0], _tinfo("a", [8], QT.F32, 32)]),
        ["duplicate tensor name 'a'"],
    ),
    "row not whole blocks": (
        _file(infos=[_tinfo("a", [10, 2], QT.Q8_0, 0)]),
        ["'a'", "row length 10 is not a multiple"],
    ),
    "truncated tensor infos": (
        _header(2, 0) + TWO[0] + _str("b") + struct.pack("<I", 1) + bytes(10),
        ["truncated", "tensor 'b': type"],
    ),
    "empty tensor name": (_file(infos=[_tinfo("", [8], QT.F32, 0)]), ["tensor #0", "empty"]),
}


def test_well_formed_base_file_parses(tmp_path: Path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(_file(infos=TWO))
    f = GGUFFile(path)
    assert list(f.tensors) == ["a", "b"] and f.version == 3
    assert f.tensor("b").shape == (8,)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_is_a_typed_error_in_under_a_second(tmp_path: Path, case: str):
    data, fragments = MALFORMED[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as err:
            _open(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 8 * 1024 * 1024  # nothing sized by a declared count or length
    msg = str(err.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


# -- the real default model -------------------------------------------------------------------
def test_smollm2_q4_1_file(smollm2_gguf):
    path = smollm2_gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    with _open(path) as ck:
        cfg = ck.hf_config
        assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
        assert cfg["num_attention_heads"] == 9 and cfg["num_key_value_heads"] == 3
        assert cfg["head_dim"] == 64 and cfg["intermediate_size"] == 1536
        assert cfg["vocab_size"] == 49152 and cfg["rope_theta"] == 100000.0
        assert cfg["rms_norm_eps"] == 1e-5 and cfg["tie_word_embeddings"] is True
        assert ck.generation_config["eos_token_id"] == 2
        names = list(ck.tensor_names())
        assert len(names) == 272 and all(n.startswith("model.") for n in names)

        reader = gguf.GGUFReader(path)
        by_name = {t.name: t for t in reader.tensors}
        processor = LlamaTensorProcessor(
            config={"num_attention_heads": 9, "num_key_value_heads": 3}
        )
        for gname, hname, kind in (
            ("token_embd.weight", "model.embed_tokens.weight", "Q8_0"),
            ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", "Q4_1"),
            ("blk.7.attn_q.weight", "model.layers.7.self_attn.q_proj.weight", "Q4_1"),
            ("blk.29.attn_k.weight", "model.layers.29.self_attn.k_proj.weight", "Q4_1"),
            ("blk.29.ffn_norm.weight", "model.layers.29.post_attention_layernorm.weight", "F32"),
        ):
            t = by_name[gname]
            assert t.tensor_type.name == kind
            start = time.perf_counter()
            got = ck.tensor(hname)
            assert time.perf_counter() - start < 2.0, hname
            want = processor.process(gguf.quants.dequantize(t.data, t.tensor_type), gname).weights
            assert ck.tensor_info(hname) == (tuple(want.shape), torch.float32)
            assert torch.equal(got, torch.from_numpy(np.array(want))), hname

        tok = ck.tokenizer()
        assert tok is not None and tok.vocab_size == 49152 and 2 in tok.eos_token_ids
        assert tok.chat_template and "<|im_start|>" in tok.chat_template
