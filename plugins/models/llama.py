"""Llama model family (Touvron et al., 2023, "LLaMA", arXiv:2302.13971; Llama 2/3; SmolLM2).

Maps a Hugging Face ``LlamaForCausalLM`` config and its tensor names onto the generic decoder:
RMSNorm, SwiGLU MLP, grouped-query attention, rotary positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.errors import ConfigError
from plugformer.core.family import FamilyConfig
from plugformer.core.model.spec import ModelSpec

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_PARTS = {
    "self_attn.q_proj": "attn.wq",
    "self_attn.k_proj": "attn.wk",
    "self_attn.v_proj": "attn.wv",
    "self_attn.o_proj": "attn.wo",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "mlp_norm",
}
_TOP = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "head.weight",
}


#: our spec field -> the config.json key it comes from (for error messages)
HF_NAMES = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
}


@dataclass
class LlamaConfig(FamilyConfig):
    name: str = "llama"


def hf_value(cfg: dict[str, Any], key: str, kind: type, default: Any = ..., where: str = "") -> Any:
    """``cfg[key]`` checked against ``kind``; a missing or mistyped value names the key."""
    if key not in cfg or cfg[key] is None:
        if default is ...:
            raise ConfigError(f"config.json: {key} is missing")
        return default
    value = cfg[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"config.json: {key} must be {kind.__name__}, got {value!r}")
    return value


def rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either config.json layout: transformers 5's ``rope_parameters``
    or the older top-level ``rope_theta`` plus ``rope_scaling``."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        return params
    merged: dict[str, Any] = {}
    if isinstance(cfg.get("rope_scaling"), dict):
        merged.update(cfg["rope_scaling"])
    elif cfg.get("rope_scaling") is not None:
        raise ConfigError(
            f"config.json: rope_scaling must be an object, got {cfg['rope_scaling']!r}"
        )
    if "rope_theta" in cfg:
        merged["rope_theta"] = cfg["rope_theta"]
    return merged


class Llama:
    """The Llama family."""

    architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)

    def __init__(self, config: LlamaConfig) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        c = hf_config
        act = hf_value(c, "hidden_act", str, "silu")
        if act != "silu":
            raise ConfigError(f"config.json: hidden_act {act!r} is not supported by llama (silu)")
        rope = rope_parameters(c)
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ConfigError(
                f"config.json: rope_scaling type {kind!r} is not supported yet (supported: default)"
            )
        heads = hf_value(c, "num_attention_heads", int)
        hidden = hf_value(c, "hidden_size", int)
        spec = ModelSpec(
            vocab_size=hf_value(c, "vocab_size", int),
            hidden_size=hidden,
            num_layers=hf_value(c, "num_hidden_layers", int),
            num_heads=heads,
            num_kv_heads=hf_value(c, "num_key_value_heads", int, heads),
            head_dim=hf_value(c, "head_dim", int, None),
            intermediate_size=hf_value(c, "intermediate_size", int),
            max_seq_len=hf_value(c, "max_position_embeddings", int, 2048),
            norm="rmsnorm",
            norm_eps=hf_value(c, "rms_norm_eps", float, 1e-6),
            mlp="gated",
            activation="silu",
            attention_bias=hf_value(c, "attention_bias", bool, False),
            attention_out_bias=hf_value(c, "attention_bias", bool, False),
            mlp_bias=hf_value(c, "mlp_bias", bool, False),
            tie_embeddings=hf_value(c, "tie_word_embeddings", bool, False),
            attention="gqa",
            positional="rope",
            positional_args={"theta": hf_value(rope, "rope_theta", float, 10000.0)},
        )
        spec.validate("config.json", HF_NAMES)
        return spec

    def tensor_name(self, hf_name: str) -> str | None:
        if hf_name.endswith("rotary_emb.inv_freq"):
            return None  # a cache of the rotary frequencies, recomputed by the positional plugin
        if hf_name in _TOP:
            return _TOP[hf_name]
        m = _LAYER.match(hf_name)
        if m:
            part, _, leaf = m.group(2).rpartition(".")
            if part in _LAYER_PARTS:
                return f"layers.{m.group(1)}.{_LAYER_PARTS[part]}.{leaf}"
        return hf_name  # not a Llama tensor: reported as unexpected

    def tp_plan(self) -> dict[str, str]:
        return {
            "embed": "vocab",
            "layers.*.attn.wq": "colwise",
            "layers.*.attn.wk": "colwise",
            "layers.*.attn.wv": "colwise",
            "layers.*.attn.wo": "rowwise",
            "layers.*.mlp.gate": "colwise",
            "layers.*.mlp.up": "colwise",
            "layers.*.mlp.down": "rowwise",
            "head": "vocab",
        }


@hookimpl
def plugformer_register(registry):
    registry.register("family", "llama", Llama, LlamaConfig)
