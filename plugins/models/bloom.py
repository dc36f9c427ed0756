"""BLOOM model family (BigScience, 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual
Language Model", arXiv:2211.05100).

ALiBi instead of position embeddings, a LayerNorm right after the word embedding, LayerNorms
with biases, biases on every linear layer, a plain MLP with BLOOM's own tanh-GELU, tied
embeddings. The fused ``query_key_value`` tensor holds per head its query, key and value
(``[heads, 3, head_dim]`` rows) and is cut on load. Names with and without the
``transformer.`` prefix (published checkpoints have none) are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.families import GPTLikeFamily
from plugformer.core.model.hf import hf_value, refuse

_PARTS = {
    "input_layernorm": "attn_norm",
    "self_attention.dense": "attn.wo",
    "post_attention_layernorm": "mlp_norm",
    "mlp.dense_h_to_4h": "mlp.up",
    "mlp.dense_4h_to_h": "mlp.down",
}
_TOP = {
    "word_embeddings.weight": "embed.weight",
    "word_embeddings_layernorm.weight": "embed_norm.weight",
    "word_embeddings_layernorm.bias": "embed_norm.bias",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
    "lm_head.weight": "head.weight",
}
NAMES = {"num_layers": "n_layer", "num_heads": "n_head", "max_seq_len": "seq_length"}


@dataclass
class BloomConfig(FamilyConfig):
    name: str = "bloom"


class Bloom(GPTLikeFamily):
    """The BLOOM family."""

    architectures = ("BloomForCausalLM",)
    model_types = ("bloom",)
    top, parts = _TOP, _PARTS
    fused_qkv = "self_attention.query_key_value"  # rows [heads, 3, head_dim]: per head q, k, v

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        c = hf_config
        if hf_value(c, "apply_residual_connection_post_layernorm", bool, False):
            raise refuse(
                "apply_residual_connection_post_layernorm", True, "the residual is the input"
            )
        if hf_value(c, "slow_but_exact", bool, False) and hf_value(c, "pretraining_tp", int, 1) > 1:
            raise refuse("slow_but_exact", True, "sliced output projections")
        hidden = hf_value(c, "hidden_size" if "hidden_size" in c else "n_embed", int)
        spec = ModelSpec(
            vocab_size=hf_value(c, "vocab_size", int),
            hidden_size=hidden,
            num_layers=hf_value(c, "n_layer" if "n_layer" in c else "num_hidden_layers", int),
            num_heads=hf_value(c, "n_head" if "n_head" in c else "num_attention_heads", int),
            intermediate_size=4 * hidden,
            max_seq_len=hf_value(c, "seq_length", int, 2048),  # ALiBi: no trained table
            norm="layernorm",
            norm_eps=hf_value(c, "layer_norm_epsilon", float, 1e-5),
            mlp="plain",
            activation="gelu_bloom",
            attention_bias=True,
            attention_out_bias=True,
            mlp_bias=True,
            embedding_norm=True,
            tie_embeddings=hf_value(c, "tie_word_embeddings", bool, True),
            attention="mha",
            positional="alibi",
        )
        spec.validate("config.json", NAMES)
        return spec


@hookimpl
def plugformer_register(registry):
    registry.register("family", "bloom", Bloom, BloomConfig)
