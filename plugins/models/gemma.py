"""Gemma model family (Gemma Team, 2024, "Gemma: Open Models Based on Gemini Research and
Technology", arXiv:2403.08295).

A Llama-shaped decoder with GeGLU (tanh-approximated GELU, ``gelu_pytorch_tanh``), the token
embedding scaled by ``sqrt(hidden_size)``, RMSNorm weights stored as offsets from one
(``x * (1 + weight)``, the ``rmsnorm`` plugin's ``unit_offset``) and tied embeddings. Gemma 2 and
later (soft-capping, alternating windows) are other architectures and are not read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import HF_ACTIVATIONS, hf_value, refuse


@dataclass
class GemmaConfig(FamilyConfig):
    name: str = "gemma"


class Gemma(LlamaLikeFamily):
    """The Gemma family."""

    architectures = ("GemmaForCausalLM",)
    model_types = ("gemma",)
    activations = ("gelu_pytorch_tanh", "gelu")

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        c = hf_config
        if hf_value(c, "use_bidirectional_attention", bool, False):
            raise refuse("use_bidirectional_attention", True, "plugformer decodes causally")
        bias = hf_value(c, "attention_bias", bool, False)
        return {
            # transformers reads Gemma's legacy "gelu" as the tanh approximation, and so do we
            "activation": HF_ACTIVATIONS["gelu_pytorch_tanh"],
            "norm_args": {"unit_offset": True},
            "embedding_scale": hf_value(c, "hidden_size", int) ** 0.5,
            "tie_embeddings": hf_value(c, "tie_word_embeddings", bool, True),
            "attention_bias": bias,
            "attention_out_bias": bias,
        }


@hookimpl
def plugformer_register(registry):
    registry.register("family", "gemma", Gemma, GemmaConfig)
