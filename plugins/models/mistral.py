"""Mistral model family (Jiang et al., 2023, "Mistral 7B", arXiv:2310.06825).

A Llama-shaped decoder (RMSNorm, SwiGLU, grouped-query attention, RoPE) whose attention may
look back only ``sliding_window`` positions; the window is applied in the decoder's mask, so it
holds through the KV cache as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import sliding_window


@dataclass
class MistralConfig(FamilyConfig):
    name: str = "mistral"


class Mistral(LlamaLikeFamily):
    """The Mistral family."""

    architectures = ("MistralForCausalLM",)
    model_types = ("mistral",)

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        return {"sliding_window": sliding_window(hf_config)}


@hookimpl
def plugformer_register(registry):
    registry.register("family", "mistral", Mistral, MistralConfig)
