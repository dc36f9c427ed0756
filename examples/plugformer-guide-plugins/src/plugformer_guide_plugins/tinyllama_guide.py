"""A model family for a made-up checkpoint layout, ``model_type: tinyllama-guide``: the
Llama-shaped decoder (Touvron et al., 2023, "LLaMA", arXiv:2302.13971) under other
``config.json`` keys and tensor names than Hugging Face's.

Its ``config.json``::

    {"architectures": ["TinyGuideForCausalLM"], "model_type": "tinyllama-guide",
     "vocab_size": 258, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
     "ffn_dim": 128, "max_seq_len": 256, "norm_eps": 1e-05, "rope_theta": 10000.0}

Its tensors carry the short names of Meta's original Llama files (``tok_embeddings``,
``layers.{i}.attention.wq``, ``feed_forward.w1`` / ``w3`` / ``w2`` for gate / up / down,
``attention_norm``, ``ffn_norm``, ``norm``, ``output``) but keep the q/k rows in the order
Hugging Face files use (rotary over the two halves of each head), so this family reads the
guide's layout, not Meta's own files. A stored ``rope.freqs`` table is skipped (``None``).

Subclassing ``LlamaLikeFamily`` gives the Llama tensor-parallel plan and ``check()``; this
family writes its own ``spec_from_hf`` so that every error names this layout's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from plugformer.core import FamilyConfig, ModelSpec, hookimpl
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import hf_value

#: our spec field -> this layout's config.json key (for the errors of spec.validate)
KEYS = {
    "hidden_size": "dim",
    "num_layers": "n_layers",
    "num_heads": "n_heads",
    "num_kv_heads": "n_kv_heads",
    "intermediate_size": "ffn_dim",
}
#: checkpoint names outside the layers -> ours
TOP = {
    "tok_embeddings.weight": "embed.weight",
    "norm.weight": "norm.weight",
    "output.weight": "head.weight",
}
#: module paths inside layer i -> ours
LAYER = {
    "attention.wq": "attn.wq",
    "attention.wk": "attn.wk",
    "attention.wv": "attn.wv",
    "attention.wo": "attn.wo",
    "feed_forward.w1": "mlp.gate",
    "feed_forward.w3": "mlp.up",
    "feed_forward.w2": "mlp.down",
    "attention_norm": "attn_norm",
    "ffn_norm": "mlp_norm",
}
_LAYER_TENSOR = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class TinyLlamaGuideConfig(FamilyConfig):
    name: str = "tinyllama_guide"


class TinyLlamaGuide(LlamaLikeFamily):
    """Checkpoints with ``model_type: tinyllama-guide``."""

    architectures = ("TinyGuideForCausalLM",)
    model_types = ("tinyllama-guide",)

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        c = hf_config
        heads = hf_value(c, "n_heads", int)
        spec = ModelSpec(
            vocab_size=hf_value(c, "vocab_size", int),
            hidden_size=hf_value(c, "dim", int),
            num_layers=hf_value(c, "n_layers", int),
            num_heads=heads,
            num_kv_heads=hf_value(c, "n_kv_heads", int, heads),
            intermediate_size=hf_value(c, "ffn_dim", int),
            max_seq_len=hf_value(c, "max_seq_len", int, 2048),
            norm_eps=hf_value(c, "norm_eps", float, 1e-5),
            # the Llama parts, each a registry name
            norm="rmsnorm",
            mlp="gated",
            activation="silu",
            attention="gqa",
            positional="rope",
            positional_args={"theta": hf_value(c, "rope_theta", float, 10000.0)},
        )
        spec.validate("config.json", KEYS)
        return spec

    def tensor_name(
        self, hf_name: str, spec: ModelSpec | None = None, hf_config: dict[str, Any] | None = None
    ) -> str | None:
        if hf_name == "rope.freqs":
            return None  # a cached rotary table: the positional plugin computes its own
        if hf_name in TOP:
            return TOP[hf_name]
        found = _LAYER_TENSOR.match(hf_name)
        if found and found.group(2) in LAYER:
            return f"layers.{found.group(1)}.{LAYER[found.group(2)]}.{found.group(3)}"
        return hf_name  # not ours: the loader lists it as unexpected


@hookimpl
def plugformer_register(registry):
    registry.register("family", "tinyllama_guide", TinyLlamaGuide, TinyLlamaGuideConfig)
