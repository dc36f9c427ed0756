"""Reading Hugging Face ``config.json`` files: what model-family plugins share.

Family plugins import only the core, so the pieces several of them need live here: typed values
that name their key, the RoPE settings of both config layouts (routed to the positional plugins
by name), the Llama-shaped fields most decoder families share, their tensor names, and the
tensor-parallel plan of the generic decoder. The family bases built from them (Llama-shaped,
GPT-shaped) are in :mod:`plugformer.core.model.families`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.spec import ModelSpec

#: HF ``hidden_act`` names -> ours (:data:`plugformer.core.interfaces.mlp.ACTIVATIONS`).
HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_new",
    "relu": "relu",
}

#: HF ``rope_type`` -> the positional plugin that implements it (its registry name).
ROPE_TYPES = {
    "default": "rope",
    "linear": "rope_linear",
    "dynamic": "rope_dynamic",
    "yarn": "rope_yarn",
    "llama3": "rope_llama3",
}

#: our spec field -> the Llama-style config.json key it comes from (for error messages)
HF_NAMES = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
}


def hf_value(cfg: dict[str, Any], key: str, kind: type, default: Any = ..., where: str = "") -> Any:
    """``cfg[key]`` checked against ``kind``; a missing or mistyped value names the key."""
    name = f"{where}.{key}" if where else key
    if key not in cfg or cfg[key] is None:
        if default is ...:
            raise ConfigError(f"config.json: {name} is missing")
        return default
    value = cfg[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"config.json: {name} must be {kind.__name__}, got {value!r}")
    return value


def refuse(key: str, value: Any, why: str) -> ConfigError:
    """The error for a config.json value plugformer does not implement."""
    return ConfigError(f"config.json: {key}={value!r} is not supported: {why}")


def hf_activation(cfg: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    """Our activation name for ``cfg[key]``, refused unless its HF name is in ``allowed``."""
    act = hf_value(cfg, key, str, default)
    if act not in allowed:
        raise refuse(key, act, f"expected one of {', '.join(allowed)}")
    return HF_ACTIVATIONS[act]


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


def rope_positional(
    cfg: dict[str, Any], head_dim: int, max_pos: int
) -> tuple[str, dict[str, Any], int]:
    """The positional plugin, its config values and the usable context length for the RoPE
    settings of ``cfg`` (as transformers' ``modeling_rope_utils`` reads them)."""
    rope = rope_parameters(cfg)
    key = "rope_parameters" if isinstance(cfg.get("rope_parameters"), dict) else "rope_scaling"
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(
            f"config.json: rope_scaling type {kind!r} is not supported ({key}.rope_type; "
            f"supported: {', '.join(ROPE_TYPES)})"
        )
    key_partial = "partial_rotary_factor"
    partial = hf_value(
        {key_partial: rope.get(key_partial, cfg.get(key_partial))}, key_partial, float, 1.0
    )
    args: dict[str, Any] = {"theta": hf_value(rope, "rope_theta", float, 10000.0, key)}
    if int(head_dim * partial) != head_dim:
        args["rotary_dim"] = int(head_dim * partial)
    if kind == "default":
        return ROPE_TYPES[kind], args, max_pos
    factor = hf_value(rope, "factor", float, None if kind == "yarn" else ..., key)
    # transformers prefers a top-level original_max_position_embeddings (Phi-3) to the rope one
    key_original = "original_max_position_embeddings"
    original = cfg.get(key_original) or rope.get(key_original)
    original = hf_value({key_original: original}, key_original, int, max_pos)
    if kind == "linear":
        args["factor"] = factor
    elif kind == "dynamic":
        args.update(factor=factor, max_position_embeddings=max_pos)
        max_pos = int(max_pos * max(factor, 1.0))  # the context dynamic scaling is meant for
    elif kind == "llama3":
        args.update(factor=factor, original_max_position_embeddings=original)
        for name in ("low_freq_factor", "high_freq_factor"):
            args[name] = hf_value(rope, name, float, ..., key)
    else:  # yarn
        args.update(
            factor=factor if factor is not None else max_pos / original,
            original_max_position_embeddings=original,
            beta_fast=hf_value(rope, "beta_fast", float, 32.0, key) or 32.0,
            beta_slow=hf_value(rope, "beta_slow", float, 1.0, key) or 1.0,
            attention_factor=hf_value(rope, "attention_factor", float, None, key),
            mscale=hf_value(rope, "mscale", float, None, key),
            mscale_all_dim=hf_value(rope, "mscale_all_dim", float, None, key),
            truncate=hf_value(rope, "truncate", bool, True, key),
        )
    return ROPE_TYPES[kind], args, max_pos


def llama_like_spec(
    cfg: dict[str, Any], activations: tuple[str, ...] = ("silu",), **fields: Any
) -> ModelSpec:
    """The spec of a Llama-shaped config (RMSNorm, gated MLP, GQA, RoPE), then ``fields``;
    validated, errors naming config.json keys. ``hidden_act`` must be one of ``activations``."""
    heads = hf_value(cfg, "num_attention_heads", int)
    hidden = hf_value(cfg, "hidden_size", int)
    head_dim = hf_value(cfg, "head_dim", int, None)
    max_pos = hf_value(cfg, "max_position_embeddings", int, 2048)
    per_head = head_dim if head_dim is not None else hidden // max(heads, 1)
    positional, positional_args, max_seq_len = rope_positional(cfg, per_head, max_pos)
    spec = ModelSpec(
        vocab_size=hf_value(cfg, "vocab_size", int),
        hidden_size=hidden,
        num_layers=hf_value(cfg, "num_hidden_layers", int),
        num_heads=heads,
        num_kv_heads=hf_value(cfg, "num_key_value_heads", int, heads),
        head_dim=head_dim,
        intermediate_size=hf_value(cfg, "intermediate_size", int),
        max_seq_len=max_seq_len,
        norm="rmsnorm",
        norm_eps=hf_value(cfg, "rms_norm_eps", float, 1e-6),
        mlp="gated",
        activation=hf_activation(cfg, "hidden_act", activations[0], activations),
        tie_embeddings=hf_value(cfg, "tie_word_embeddings", bool, False),
        attention="gqa",
        positional=positional,
        positional_args=positional_args,
    )
    spec = dataclasses.replace(spec, **fields)
    spec.validate("config.json", HF_NAMES)
    return spec


def sliding_window(cfg: dict[str, Any]) -> int | None:
    """``sliding_window`` of Mistral-style configs (None or absent: no window)."""
    return hf_value(cfg, "sliding_window", int, None)


_LLAMA_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
#: Llama-style HF module paths inside a layer -> ours
LLAMA_LAYER_PARTS = {
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
LLAMA_TOP = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "head.weight",
}


def llama_layer(hf_name: str) -> tuple[int, str, str] | None:
    """``(layer, module path, leaf)`` of a Llama-style layer tensor name, or None."""
    m = _LLAMA_LAYER.match(hf_name)
    if not m:
        return None
    part, _, leaf = m.group(2).rpartition(".")
    return int(m.group(1)), part, leaf


def transformer_layer(hf_name: str) -> tuple[int, str, str] | None:
    """``(layer, module path, leaf)`` of a ``[transformer.]h.<n>.<path>.<leaf>`` tensor name
    (GPT-2, BLOOM, Falcon), or None."""
    name = hf_name.removeprefix("transformer.")
    if not name.startswith("h."):
        return None
    layer, _, rest = name[2:].partition(".")
    part, _, leaf = rest.rpartition(".")
    return (int(layer), part, leaf) if layer.isdigit() else None


def llama_tensor_name(hf_name: str, parts: dict[str, str] = LLAMA_LAYER_PARTS) -> str | None:
    """Our name for a Llama-style HF tensor name (the name itself when it is not one, so the
    loader reports it as unexpected; None for rotary caches, which are recomputed)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    if hf_name in LLAMA_TOP:
        return LLAMA_TOP[hf_name]
    found = llama_layer(hf_name)
    if found and found[1] in parts:
        return f"layers.{found[0]}.{parts[found[1]]}.{found[2]}"
    return hf_name


def decoder_tp_plan(mlp: str = "gated") -> dict[str, str]:
    """The tensor-parallel plan of the generic decoder with this MLP plugin."""
    plan = {
        "embed": "vocab",
        "layers.*.attn.wq": "colwise",
        "layers.*.attn.wk": "colwise",
        "layers.*.attn.wv": "colwise",
        "layers.*.attn.wo": "rowwise",
        "head": "vocab",
    }
    prefix = "layers.*.mlp.experts.*" if mlp == "moe" else "layers.*.mlp"
    if mlp == "moe":
        plan["layers.*.mlp.router"] = "replicate"  # every rank routes every token alike
    if mlp in ("gated", "moe"):
        plan[f"{prefix}.gate"] = "colwise"
    plan[f"{prefix}.up"] = "colwise"
    plan[f"{prefix}.down"] = "rowwise"
    return plan
