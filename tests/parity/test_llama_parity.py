"""A tiny random transformers LlamaForCausalLM (GQA), saved as safetensors, loads through our
loader and gives transformers' logits and greedy tokens."""

from __future__ import annotations

import json

import pytest
import torch

import plugformer
from plugformer.core.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")


#: the shared tiny Llama (conftest.py) with a narrower MLP
TINY = {"intermediate_size": 112}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_hf_llama):
    model = tiny_hf_llama(**TINY)
    plain = tmp_path_factory.mktemp("llama")
    model.save_pretrained(plain, safe_serialization=True)
    sharded = tmp_path_factory.mktemp("llama_sharded")
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="60KB")
    return model, plain, sharded


IDS = torch.tensor([[1, 17, 42, 99, 5, 150, 3, 77, 8, 64, 12, 31]])


@pytest.mark.parametrize("which", ["plain", "sharded"])
def test_logits_equal_transformers(saved, which):
    model, plain, sharded = saved
    path = plain if which == "plain" else sharded
    if which == "sharded":
        assert (path / "model.safetensors.index.json").exists()
    engine = plugformer.Engine.from_overrides([f"model.path={path}"])
    assert engine.spec.num_kv_heads == 2 and engine.positional_config.theta == 5000.0
    with torch.no_grad():
        expected = model(IDS).logits
    # fp32 on CPU: transformers' default assert_close tolerances (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(engine.logits(IDS), expected)


def test_swapping_attention_keeps_logits(saved):
    _, plain, _ = saved
    a = plugformer.Engine.from_overrides([f"model.path={plain}", "attention=gqa"]).logits(IDS)
    b = plugformer.Engine.from_overrides(
        [f"model.path={plain}", "attention=gqa", "attention.impl=reference"]
    ).logits(IDS)
    torch.testing.assert_close(a, b)


def test_cached_greedy_equals_transformers_generate(saved):
    model, plain, _ = saved
    engine = plugformer.Engine.from_overrides([f"model.path={plain}"])
    prompt = IDS[0].tolist()
    ours = engine.generate(prompt, 32, temperature=0.0, ignore_eos=True).token_ids
    with torch.no_grad():
        ref = model.generate(
            IDS, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0,
            min_new_tokens=32,
        )[0, IDS.shape[1]:].tolist()  # fmt: skip
    assert ours == ref


def test_tied_embeddings_load(tmp_path, tiny_hf_llama):
    model = tiny_hf_llama(**TINY)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path, safe_serialization=True)
    engine = plugformer.Engine.from_overrides([f"model.path={tmp_path}"])
    assert engine.model.head.weight is engine.model.embed.weight
    with torch.no_grad():
        torch.testing.assert_close(engine.logits(IDS), model(IDS).logits)


def test_shape_disagreeing_with_config_is_named(saved, tmp_path):
    _, plain, _ = saved
    for f in plain.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has shape"
    ):
        plugformer.Engine.from_overrides([f"model.path={tmp_path}"])


def test_missing_and_unexpected_tensors_are_all_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, plain, _ = saved
    for f in plain.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("model.norm.weight")
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        plugformer.Engine.from_overrides([f"model.path={tmp_path}"])
    msg = str(info.value)
    assert "missing tensors: layers.1.mlp.up.weight, norm.weight" in msg
    assert "unexpected tensors: model.layers.0.extra.weight" in msg


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("hidden_size", 0, "hidden_size"),
        ("num_attention_heads", 5, "num_key_value_heads: 2 does not divide"),
        ("num_key_value_heads", 3, None),
        ("num_hidden_layers", 100000, "absurd"),
        ("rope_scaling", {"rope_type": "bogus", "factor": 2.0}, "rope_scaling type 'bogus'"),
        ("rope_parameters", {"rope_type": "bogus", "rope_theta": 1.0}, "rope_scaling type 'bogus'"),
        ("architectures", ["NoSuchForCausalLM"], None),
    ],
)
def test_bad_config_json_is_refused(saved, tmp_path, key, value, expected):
    _, plain, _ = saved
    for f in plain.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    if key == "num_key_value_heads":
        cfg["num_attention_heads"] = 6  # 64 is not divisible by 6, but first: 3 divides 6
        expected = "hidden_size: 64 is not divisible by config.json.num_attention_heads=6"
    if key == "rope_scaling":
        cfg.pop("rope_parameters", None)  # the pre-transformers-5 layout: rope_scaling
    cfg.pop("head_dim", None)  # derived from hidden_size / num_attention_heads, as in HF
    if key == "architectures":
        cfg["model_type"] = "nosuch"
        expected = "unknown architecture"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=expected):
        plugformer.Engine.from_overrides([f"model.path={tmp_path}"])
