"""Llama model family (Touvron et al., 2023, "LLaMA", arXiv:2302.13971; Llama 2/3/3.1/3.2;
SmolLM2).

Maps a Hugging Face ``LlamaForCausalLM`` config and its tensor names onto the generic decoder:
RMSNorm, SwiGLU MLP, grouped-query attention, rotary positions with the ``rope_scaling`` types
``linear``, ``dynamic``, ``yarn`` and ``llama3`` (each its own positional plugin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import hf_value


@dataclass
class LlamaConfig(FamilyConfig):
    name: str = "llama"


class Llama(LlamaLikeFamily):
    """The Llama family."""

    architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        bias = hf_value(hf_config, "attention_bias", bool, False)
        return {
            "attention_bias": bias,
            "attention_out_bias": bias,
            "mlp_bias": hf_value(hf_config, "mlp_bias", bool, False),
        }


@hookimpl
def plugformer_register(registry):
    registry.register("family", "llama", Llama, LlamaConfig)
