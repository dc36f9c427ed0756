"""The RoPE scaling plugins (``rope_linear``, ``rope_dynamic``, ``rope_yarn``, ``rope_llama3``)
against transformers' own initialisation functions (``modeling_rope_utils``): the same inverse
frequencies and attention factor, bit for bit, and the family's mapping of config.json onto
them. The whole model with each type is compared in ``test_families.py``."""

from __future__ import annotations

import pytest
import torch

from plugformer import RefusedError
from plugformer.core.interfaces.positional import PositionalDims
from plugformer.core.model.hf import rope_positional

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

HEAD_DIM = 64


def hf_config(rope: dict, max_pos: int = 4096, **extra) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_theta": 500000.0, **rope},
        **extra,
    )


def ours(registry, config: transformers.LlamaConfig):
    """Our positional plugin for the HF config, through the same mapping the families use."""
    raw = config.to_dict()
    name, args, _ = rope_positional(raw, HEAD_DIM, config.max_position_embeddings)
    entry = registry.get("positional", name)
    dims = PositionalDims(4, HEAD_DIM, config.max_position_embeddings)
    return name, registry.build("positional", entry.config(**args), dims)


CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512},
    "yarn-betas-untruncated": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 1024,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "truncate": False,
    },
    "yarn-mscale": {  # DeepSeek's attention factor from mscale / mscale_all_dim
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
    },
    "yarn-attention-factor": {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 2048,
        "attention_factor": 1.5,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512,
    },
}


@pytest.mark.parametrize("rope", CASES.values(), ids=CASES.keys())
def test_frequencies_equal_transformers(registry, rope):
    config = hf_config(dict(rope))
    expected, factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
    name, plugin = ours(registry, config)
    assert name == f"rope_{rope['rope_type']}"
    assert torch.equal(plugin.inv_freq, expected)
    assert plugin.attention_factor == factor
    if rope["rope_type"] == "yarn":
        assert factor != 1.0  # the attention factor really is applied: check cos/sin
        cos, _ = plugin.prepare(torch.tensor([[0, 3]]))
        assert torch.allclose(cos[0, 0, 0], torch.full_like(cos[0, 0, 0], factor))


@pytest.mark.parametrize("length", [100, 4096, 4097, 6000, 9000])
def test_dynamic_frequencies_follow_the_length(registry, length):
    """transformers recomputes with the longest position + 1 (as a tensor) beyond the trained
    length; at or below it, the init-time frequencies stand."""
    config = hf_config(dict(CASES["dynamic"]))
    _, plugin = ours(registry, config)
    positions = torch.arange(length).unsqueeze(0)
    got = plugin.inv_freq_for(positions)
    if length <= config.max_position_embeddings:
        expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu")
    else:
        expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=torch.tensor(length))
    assert torch.equal(got, expected)


def test_dynamic_context_is_the_scaled_one():
    _, _, max_seq_len = rope_positional(hf_config(dict(CASES["dynamic"])).to_dict(), HEAD_DIM, 4096)
    assert max_seq_len == 8192  # factor 2 over the trained 4096 positions


def test_top_level_original_length_wins_as_in_transformers(registry):
    # Phi-3 style: original_max_position_embeddings beside rope_parameters, not inside
    config = hf_config({"rope_type": "yarn", "factor": 4.0}, original_max_position_embeddings=256)
    expected, _ = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    _, plugin = ours(registry, config)
    assert plugin.config.original_max_position_embeddings == 256
    assert torch.equal(plugin.inv_freq, expected)


@pytest.mark.parametrize(
    ("name", "field", "value", "reason"),
    [
        ("rope_linear", "factor", 0.0, "positional.factor=0.0 must be positive"),
        ("rope_dynamic", "max_position_embeddings", 0, "max_position_embeddings=0 must be"),
        ("rope_yarn", "beta_slow", -1.0, "beta_slow=-1.0 must be positive"),
        ("rope_llama3", "high_freq_factor", 0.5, "low_freq_factor=1.0 must be positive and"),
    ],
)
def test_bad_scaling_values_are_refused(registry, name, field, value, reason):
    config = registry.get("positional", name).config(**{field: value})
    with pytest.raises(RefusedError, match=reason):
        registry.build("positional", config, PositionalDims(4, HEAD_DIM, 4096))
