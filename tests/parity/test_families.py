"""Every model family against transformers: a tiny random model of the family's transformers
class (2 layers, 4 heads, GQA where the family has it), saved as safetensors, loaded through
plugformer; fp32 logits and 32 tokens of cached greedy generation must equal transformers'.

The random models use ``initializer_range=0.1`` (transformers' default is 0.02): attention
scores are then O(1) instead of ~0.02, so positions, sliding windows and expert routing really
change the outputs (a wrong window or rotation moves logits by >1e-2, see
``test_sliding_window_matters``), and greedy decoding has margins far above fp32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import plugformer
from plugformer.core.errors import ConfigError

transformers = pytest.importorskip("transformers")

VOCAB = 128
COMMON = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
LLAMA = {**COMMON, "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 64}
TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
ROPE = {"rope_theta": 10000.0}

# name: (config class, model class, config values, what our spec must say)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA, {"positional": "rope"}),
    "llama-linear": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {**LLAMA, "rope_parameters": {**ROPE, "rope_type": "linear", "factor": 2.0}},
        {"positional": "rope_linear"},
    ),
    "llama-dynamic": (  # 12 + 32 tokens cross the trained 16 positions: the base grows
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            **LLAMA,
            "max_position_embeddings": 16,
            "rope_parameters": {**ROPE, "rope_type": "dynamic", "factor": 4.0},
        },
        {"positional": "rope_dynamic", "max_seq_len": 64},
    ),
    "llama-yarn": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            **LLAMA,
            "rope_parameters": {
                **ROPE,
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
        {"positional": "rope_yarn"},
    ),
    "llama3.1": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            **LLAMA,
            "rope_parameters": {
                "rope_theta": 500000.0,
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
        {"positional": "rope_llama3"},
    ),
    "mistral": (  # a window of 5 over 44 positions
        "MistralConfig",
        "MistralForCausalLM",
        {**LLAMA, "sliding_window": 5},
        {"sliding_window": 5},
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {**LLAMA, "intermediate_size": 48, "num_local_experts": 4, "num_experts_per_tok": 2},
        {"mlp": "moe", "mlp_args": {"num_experts": 4, "top_k": 2}},
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {**LLAMA, "tie_word_embeddings": True},
        {"attention_bias": True, "attention_out_bias": False, "tie_embeddings": True},
    ),
    "qwen2-sliding": (  # use_sliding_window on every layer (max_window_layers 0)
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {**LLAMA, "use_sliding_window": True, "sliding_window": 6, "max_window_layers": 0},
        {"sliding_window": 6},
    ),
    "phi3": (  # fused qkv and gate_up, partial rotary, a sliding window
        "Phi3Config",
        "Phi3ForCausalLM",
        {**LLAMA, **TOKENS, "sliding_window": 7, "partial_rotary_factor": 0.5},
        {"sliding_window": 7, "positional_args": {"theta": 10000.0, "rotary_dim": 8}},
    ),
    "falcon-40b": (  # new decoder architecture: GQA groups, ln_attn + ln_mlp
        "FalconConfig",
        "FalconForCausalLM",
        {**COMMON, **TOKENS, "num_kv_heads": 2, "new_decoder_architecture": True},
        {"num_kv_heads": 2, "parallel_block": True, "parallel_mlp_norm": True},
    ),
    "falcon-7b": (  # multi-query, parallel attention and MLP on one norm, biases
        "FalconConfig",
        "FalconForCausalLM",
        {**COMMON, **TOKENS, "multi_query": True, "bias": True},
        {"num_kv_heads": 1, "parallel_block": True, "parallel_mlp_norm": False},
    ),
    "falcon-mha-sequential": (
        "FalconConfig",
        "FalconForCausalLM",
        {**COMMON, **TOKENS, "multi_query": False, "parallel_attn": False},
        {"num_kv_heads": 4, "parallel_block": False},
    ),
    "bloom": (
        "BloomConfig",
        "BloomForCausalLM",
        {"vocab_size": VOCAB, "hidden_size": 64, "n_layer": 2, "n_head": 4, **TOKENS},
        {"positional": "alibi", "embedding_norm": True, "activation": "gelu_bloom"},
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {"vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, **TOKENS},
        {"positional": "learned", "activation": "gelu_new"},  # 2.0: positions are a plugin
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        {**LLAMA, "num_key_value_heads": 1, "head_dim": 32, **TOKENS},
        {"embedding_scale": 8.0, "norm_args": {"unit_offset": True}, "activation": "gelu_tanh"},
    ),
}

PROMPT = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
LONG = torch.randint(3, VOCAB, (2, 44), generator=torch.Generator().manual_seed(2))


def hf_model(name: str) -> torch.nn.Module:
    config_cls, model_cls, values, _ = FAMILIES[name]
    config = getattr(transformers, config_cls)(**values, initializer_range=0.1)
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (the transformers model, its safetensors directory); built once per family."""
    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(name: str) -> tuple[torch.nn.Module, Path]:
        if name not in cache:
            model = hf_model(name)
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path, safe_serialization=True)
            cache[name] = (model, path)
        return cache[name]

    return get


def greedy(engine: plugformer.Engine, prompt: torch.Tensor, n: int = 32) -> list[int]:
    out = engine.generate(prompt[0].tolist(), n, temperature=0.0, ignore_eos=True)
    return out.token_ids


def hf_greedy(model: torch.nn.Module, prompt: torch.Tensor, n: int = 32) -> list[int]:
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return out[0, prompt.shape[1] :].tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_family_equals_transformers(saved, name):
    model, path = saved(name)
    engine = plugformer.Engine.from_overrides([f"model.path={path}"])
    for key, value in FAMILIES[name][3].items():
        assert getattr(engine.spec, key) == value, key
    # the parts are the registry's plugins, whatever the family
    block = engine.model.layers[0]
    assert type(block.mlp).__module__.startswith("plugformer.plugins.mlp.")
    assert type(block.attn_norm).__module__.startswith("plugformer.plugins.norm.")
    with torch.no_grad():
        expected = model(LONG).logits
    # fp32 on CPU: transformers' default assert_close tolerances (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(engine.logits(LONG), expected)
    assert greedy(engine, PROMPT) == hf_greedy(model, PROMPT)


@pytest.mark.parametrize("name", ["llama", "mistral", "falcon-7b", "bloom", "gpt2"])
def test_reference_attention_gives_the_same_logits(saved, name):
    # swapping the attention kernel of a checkpoint: the spelled-out product instead of SDPA
    model, path = saved(name)
    own = plugformer.Engine.from_overrides([f"model.path={path}"])
    kernel = own.spec.attention
    ref = plugformer.Engine.from_overrides(
        [f"model.path={path}", f"attention={kernel}", "attention.impl=reference"]
    )
    assert ref.attention_config.impl == "reference"
    with torch.no_grad():
        expected = model(LONG).logits
    # the reference kernel sums in another order than SDPA: a few fp32 ulps of logits ~3
    torch.testing.assert_close(ref.logits(LONG), expected, rtol=1e-5, atol=1e-5)


def test_sliding_window_matters(saved):
    """The mistral case above is not vacuous: without its window the logits move."""
    model, path = saved("mistral")
    engine = plugformer.Engine.from_overrides([f"model.path={path}"])
    model.config.sliding_window = None
    try:
        with torch.no_grad():
            unwindowed = model(LONG).logits
    finally:
        model.config.sliding_window = 5
    assert (engine.logits(LONG) - unwindowed)[:, 5:].abs().max() > 1e-2
    # a narrower window chosen on the attention kernel wins over the model's own
    narrow = plugformer.Engine.from_overrides(
        [f"model.path={path}", "attention=gqa", "attention.sliding_window=3"]
    )
    assert narrow.model.window == 3
    assert (narrow.logits(LONG) - engine.logits(LONG)).abs().max() > 1e-2


def test_mixtral_fused_expert_layout(saved, tmp_path):
    """transformers 5 holds experts fused (``mlp.experts.gate_up_proj`` [E, 2F, H]); such a
    checkpoint is cut per expert on load."""
    from safetensors.torch import save_file

    model, path = saved("mixtral")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    engine = plugformer.Engine.from_overrides([f"model.path={tmp_path}"])
    with torch.no_grad():
        torch.testing.assert_close(engine.logits(LONG), model(LONG).logits)


# -- refusals: every unsupported value is named with its key -------------------------------------

REFUSALS = [
    ("mistral", {"rope_parameters": {**ROPE, "rope_type": "su"}}, "rope_scaling type 'su'"),
    (
        "phi3",
        {"rope_parameters": {**ROPE, "rope_type": "longrope", "long_factor": [1.0]}},
        r"rope_scaling type 'longrope' is not supported \(rope_parameters\.rope_type",
    ),
    ("falcon-7b", {"alibi": True}, "alibi=True is not supported"),
    (
        "falcon-40b",
        {"parallel_attn": False},
        "parallel_attn=False is not supported: new_decoder_architecture",
    ),
    (
        "qwen2",
        # older configs have no layer_types: derived from max_window_layers, as transformers does
        {
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
            "layer_types": None,
        },
        r"use_sliding_window=True is not supported: sliding windows on layers \[1\] only",
    ),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ("bloom", {"apply_residual_connection_post_layernorm": True}, "apply_residual_connection"),
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ("mistral", {"sliding_window": 0}, "sliding_window: expected a positive integer"),
    ("mixtral", {"num_experts_per_tok": 5}, r"mlp\.top_k=5 must be an integer in \[1, num_exp"),
    (
        "llama",
        {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"},
        r"unknown architecture \['Gemma2ForCausalLM'\] \(model_type 'gemma2'\)",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "message"), REFUSALS, ids=[f"{n}-{next(iter(c))}" for n, c, _ in REFUSALS]
)
def test_unsupported_config_is_refused_by_key_and_value(saved, tmp_path, name, change, message):
    _, path = saved(name)
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(plugformer.PlugformerError, match=message) as info:
        plugformer.Engine.from_overrides([f"model.path={tmp_path}"])
    assert isinstance(info.value, (ConfigError, plugformer.RefusedError))


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "phi3",
            {"num_key_value_heads": 1},
            r"qkv_proj\.weight has shape \[128, 64\], which cannot be cut as the config says",
        ),
        ("falcon-40b", {"num_kv_heads": 4}, r"query_key_value\.weight has shape \[128, 64\]"),
        ("mixtral", {"num_local_experts": 3}, "unexpected tensors: .*experts.3.w1.weight"),
        (
            "gpt2",
            {"n_inner": 128},
            r"c_fc\.weight has shape \[64, 256\] \(its part layers\.0\.mlp\.up\.weight: \[256, 64",
        ),
    ],
    ids=["phi3-kv-heads", "falcon-kv-heads", "mixtral-experts", "gpt2-inner"],
)
def test_fused_tensors_disagreeing_with_the_config_are_named(
    saved, tmp_path, name, change, message
):
    """A fused tensor is never cut silently by a config that disagrees with it."""
    _, path = saved(name)
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(plugformer.CheckpointError, match=message):
        plugformer.Engine.from_overrides([f"model.path={tmp_path}"])
