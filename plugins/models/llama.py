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
from plugformer.core.interfaces.family import FamilyBase, FamilyConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.hf import decoder_tp_plan, hf_value, llama_like_spec, llama_tensor_name


@dataclass
class LlamaConfig(FamilyConfig):
    name: str = "llama"


class Llama(FamilyBase):
    """The Llama family."""

    architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        c = hf_config
        bias = hf_value(c, "attention_bias", bool, False)
        return llama_like_spec(
            c,
            attention_bias=bias,
            attention_out_bias=bias,
            mlp_bias=hf_value(c, "mlp_bias", bool, False),
        )

    def tensor_name(self, hf_name: str) -> str | None:
        return llama_tensor_name(hf_name)

    def tp_plan(self) -> dict[str, str]:
        return decoder_tp_plan("gated")


@hookimpl
def plugformer_register(registry):
    registry.register("family", "llama", Llama, LlamaConfig)
