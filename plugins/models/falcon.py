"""Falcon model family (Almazrouei et al., 2023, "The Falcon Series of Open Language Models",
arXiv:2311.16867).

LayerNorm, a plain GELU MLP and rotary positions, with attention and MLP in parallel off the
same input. Three attention layouts share the fused ``query_key_value`` tensor: multi-query
(Falcon-7B: all query heads, then one key and one value head), the "new decoder architecture"
(Falcon-40B/180B: per KV group its query heads, then its key and value head, with separate
``ln_attn`` / ``ln_mlp`` norms) and multi-head (per head its q, k, v). All three are the grouped
layout ``[kv_heads, heads / kv_heads + 2, head_dim]`` (one group, or one head per group), which
is how it is cut on load. ALiBi Falcons (``alibi: true``, the RW-1B models) scale ALiBi with
the scores and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.families import GPTLikeFamily
from plugformer.core.model.hf import hf_activation, hf_value, refuse
from plugformer.core.model.hf import rope_positional as rope

_PARTS = {
    "self_attention.dense": "attn.wo",
    "mlp.dense_h_to_4h": "mlp.up",
    "mlp.dense_4h_to_h": "mlp.down",
    "input_layernorm": "attn_norm",
    "ln_attn": "attn_norm",
    "post_attention_layernorm": "mlp_norm",
    "ln_mlp": "mlp_norm",
}
_TOP = {
    "word_embeddings.weight": "embed.weight",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
    "lm_head.weight": "head.weight",
}
NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}


@dataclass
class FalconConfig(FamilyConfig):
    name: str = "falcon"


def _get(c: dict[str, Any], key: str, alias: str, kind: type, default: Any = ...) -> Any:
    return hf_value(c, key if key in c else alias, kind, default)


class Falcon(GPTLikeFamily):
    """The Falcon family."""

    architectures = ("FalconForCausalLM",)
    model_types = ("falcon",)
    top, parts = _TOP, _PARTS
    fused_qkv = "self_attention.query_key_value"  # rows [kv_heads, heads / kv_heads + 2, head_dim]

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        c = hf_config
        if hf_value(c, "alibi", bool, False):
            raise refuse("alibi", True, "Falcon's ALiBi variant (scaled with the scores)")
        new = hf_value(c, "new_decoder_architecture", bool, False)
        parallel = hf_value(c, "parallel_attn", bool, True)
        norms = hf_value(c, "num_ln_in_parallel_attn", int, 2 if new else 1)
        if new and not parallel:
            raise refuse("parallel_attn", False, "new_decoder_architecture needs it true")
        if norms not in (1, 2) or (norms == 2 and not new and parallel):
            raise refuse("num_ln_in_parallel_attn", norms, "1, or 2 with new_decoder_architecture")
        heads = _get(c, "num_attention_heads", "n_head", int)
        hidden = _get(c, "hidden_size", "n_embed", int)
        if new:
            kv = _get(c, "num_kv_heads", "n_head_kv", int, heads)
        else:
            kv = 1 if hf_value(c, "multi_query", bool, True) else heads
        bias = hf_value(c, "bias", bool, False)
        max_pos = hf_value(c, "max_position_embeddings", int, 2048)
        positional, positional_args, max_seq_len = rope(c, hidden // max(heads, 1), max_pos)
        spec = ModelSpec(
            vocab_size=hf_value(c, "vocab_size", int),
            hidden_size=hidden,
            num_layers=_get(c, "num_hidden_layers", "n_layer", int),
            num_heads=heads,
            num_kv_heads=kv,
            intermediate_size=hf_value(c, "ffn_hidden_size", int, 4 * hidden),
            max_seq_len=max_seq_len,
            norm="layernorm",
            norm_eps=hf_value(c, "layer_norm_epsilon", float, 1e-5),
            mlp="plain",
            activation=hf_activation(c, "activation", "gelu", ("gelu",)),
            attention_bias=bias,
            attention_out_bias=bias,
            mlp_bias=bias,
            parallel_block=parallel,
            parallel_mlp_norm=parallel and new and norms == 2,
            tie_embeddings=hf_value(c, "tie_word_embeddings", bool, True),
            attention="gqa",
            positional=positional,
            positional_args=positional_args,
        )
        spec.validate("config.json", NAMES)
        return spec


@hookimpl
def plugformer_register(registry):
    registry.register("family", "falcon", Falcon, FalconConfig)
