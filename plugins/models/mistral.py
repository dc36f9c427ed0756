"""Mistral model family (Jiang et al., 2023, "Mistral 7B", arXiv:2310.06825).

A Llama-shaped decoder (RMSNorm, SwiGLU, grouped-query attention, RoPE) whose attention may
look back only ``sliding_window`` positions; the window is applied in the decoder's mask, so it
holds through the KV cache as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyBase, FamilyConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.hf import (
    decoder_tp_plan,
    llama_like_spec,
    llama_tensor_name,
    sliding_window,
)


@dataclass
class MistralConfig(FamilyConfig):
    name: str = "mistral"


class Mistral(FamilyBase):
    """The Mistral family."""

    architectures = ("MistralForCausalLM",)
    model_types = ("mistral",)

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        return llama_like_spec(hf_config, sliding_window=sliding_window(hf_config))

    def tensor_name(self, hf_name: str) -> str | None:
        return llama_tensor_name(hf_name)

    def tp_plan(self) -> dict[str, str]:
        return decoder_tp_plan("gated")


@hookimpl
def plugformer_register(registry):
    registry.register("family", "mistral", Mistral, MistralConfig)
