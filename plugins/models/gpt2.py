"""GPT-2 model family (Radford et al., 2019, "Language Models are Unsupervised Multitask
Learners"; OpenAI's model card).

Learned absolute position embeddings added to the token embedding (the ``learned`` positional
plugin: ``wpe`` is ``positional.weight``), LayerNorm, biases
everywhere, a plain GELU MLP (``gelu_new``, the tanh approximation) and tied embeddings.
GPT-2 stores its projections as ``Conv1D`` weights, ``[in, out]``: they are transposed on load,
and the fused ``c_attn`` (query, key, value columns) is cut into three. Names with and without
the ``transformer.`` prefix (published checkpoints have none) are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig, TensorPart, expect_shape
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.families import GPTLikeFamily
from plugformer.core.model.hf import hf_activation, hf_value, refuse, transformer_layer

_NORMS = {"ln_1": "attn_norm", "ln_2": "mlp_norm"}
_CONV1D = {"attn.c_proj": "attn.wo", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
_TOP = {
    "wte.weight": "embed.weight",
    "wpe.weight": "positional.weight",  # the learned positional plugin's weight
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
    "lm_head.weight": "head.weight",
}
NAMES = {
    "hidden_size": "n_embd",
    "num_layers": "n_layer",
    "num_heads": "n_head",
    "max_seq_len": "n_positions",
    "intermediate_size": "n_inner",
}


@dataclass
class GPT2Config(FamilyConfig):
    name: str = "gpt2"


class GPT2(GPTLikeFamily):
    """The GPT-2 family."""

    architectures = ("GPT2LMHeadModel",)
    model_types = ("gpt2",)
    top, parts = _TOP, _NORMS  # Conv1D layers: biases below, weights in tensor_parts

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        c = hf_config
        if hf_value(c, "scale_attn_by_inverse_layer_idx", bool, False):
            raise refuse("scale_attn_by_inverse_layer_idx", True, "one softmax scale for all")
        if hf_value(c, "add_cross_attention", bool, False):
            raise refuse("add_cross_attention", True, "plugformer runs decoder-only models")
        hidden = hf_value(c, "n_embd", int)
        scaled = hf_value(c, "scale_attn_weights", bool, True)
        spec = ModelSpec(
            vocab_size=hf_value(c, "vocab_size", int),
            hidden_size=hidden,
            num_layers=hf_value(c, "n_layer", int),
            num_heads=hf_value(c, "n_head", int),
            intermediate_size=hf_value(c, "n_inner", int, 4 * hidden),
            max_seq_len=hf_value(c, "n_positions", int, 1024),
            norm="layernorm",
            norm_eps=hf_value(c, "layer_norm_epsilon", float, 1e-5),
            mlp="plain",
            activation=hf_activation(
                c, "activation_function", "gelu_new", ("gelu_new", "gelu", "relu")
            ),
            attention_bias=True,
            attention_out_bias=True,
            mlp_bias=True,
            tie_embeddings=hf_value(c, "tie_word_embeddings", bool, True),
            attention_scale=None if scaled else 1.0,
            attention="mha",
            positional="learned",
        )
        spec.validate("config.json", NAMES)
        return spec

    def tensor_name(
        self, hf_name: str, spec: ModelSpec | None = None, hf_config: dict[str, Any] | None = None
    ) -> str | None:
        found = transformer_layer(hf_name)
        if found:
            layer, part, leaf = found
            if part == "attn" and leaf in ("bias", "masked_bias"):
                return None  # old checkpoints store the causal mask as a buffer
            if part in _CONV1D and leaf == "bias":
                return f"layers.{layer}.{_CONV1D[part]}.bias"
        return super().tensor_name(hf_name, spec, hf_config)

    def tensor_parts(self, hf_name: str, spec: ModelSpec) -> list[TensorPart] | None:
        found = transformer_layer(hf_name)
        if not found:
            return None
        layer, part, leaf = found
        prefix = f"layers.{layer}"
        if part in _CONV1D and leaf == "weight":  # Conv1D [in, out] -> Linear [out, in]
            return [(f"{prefix}.{_CONV1D[part]}.weight", lambda t: t.t())]
        if part == "attn.c_attn":  # columns (weight [in, 3h]) or entries (bias [3h]): q, k, v
            h = spec.hidden_size
            if leaf == "weight":
                return [
                    (
                        f"{prefix}.attn.{ours}.weight",
                        lambda t, i=i: expect_shape(t, None, 3 * h)[:, i * h : (i + 1) * h].t(),
                    )
                    for i, ours in enumerate(("wq", "wk", "wv"))
                ]
            return [
                (
                    f"{prefix}.attn.{ours}.bias",
                    lambda t, i=i: expect_shape(t, 3 * h)[i * h : (i + 1) * h],
                )
                for i, ours in enumerate(("wq", "wk", "wv"))
            ]
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("family", "gpt2", GPT2, GPT2Config)
