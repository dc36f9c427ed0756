"""Mixtral model family (Jiang et al., 2024, "Mixtral of Experts", arXiv:2401.04088).

Mistral's decoder with a sparse mixture-of-experts MLP (the ``moe`` MLP plugin): a router picks
``num_experts_per_tok`` of ``num_local_experts`` SwiGLU experts per token. Reads both tensor
layouts: the published one (``block_sparse_moe.experts.E.w1/w2/w3``) and transformers 5's fused
one (``mlp.experts.gate_up_proj`` / ``down_proj``, cut per expert on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig, TensorPart, expect_shape
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import hf_value, llama_layer, sliding_window

_EXPERT = {"w1": "gate", "w3": "up", "w2": "down"}  # Mixtral's expert names -> ours


@dataclass
class MixtralConfig(FamilyConfig):
    name: str = "mixtral"


class Mixtral(LlamaLikeFamily):
    """The Mixtral family."""

    architectures = ("MixtralForCausalLM",)
    model_types = ("mixtral",)
    mlp = "moe"

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        c = hf_config
        return {
            "sliding_window": sliding_window(c),
            "mlp_args": {
                "num_experts": hf_value(c, "num_local_experts", int, 8),
                "top_k": hf_value(c, "num_experts_per_tok", int, 2),
            },
        }

    def tensor_name(
        self, hf_name: str, spec: ModelSpec | None = None, hf_config: dict[str, Any] | None = None
    ) -> str | None:
        found = llama_layer(hf_name)
        if found:
            layer, part, leaf = found
            pieces = part.split(".")
            if part in ("block_sparse_moe.gate", "mlp.gate"):
                return f"layers.{layer}.mlp.router.{leaf}"
            expert = pieces[:2] == ["block_sparse_moe", "experts"] and len(pieces) == 4
            if expert and pieces[3] in _EXPERT:
                return f"layers.{layer}.mlp.experts.{pieces[2]}.{_EXPERT[pieces[3]]}.{leaf}"
        return super().tensor_name(hf_name, spec, hf_config)

    def tensor_parts(self, hf_name: str, spec: ModelSpec) -> list[TensorPart] | None:
        found = llama_layer(hf_name)
        if not found or found[1] != "mlp.experts":
            return None
        layer, _, leaf = found
        f, experts = spec.intermediate_size, int(spec.mlp_args.get("num_experts", 8))
        prefix = f"layers.{layer}.mlp.experts"
        if leaf == "gate_up_proj":  # [E, 2F, H]: gate rows, then up rows
            return [
                (
                    f"{prefix}.{e}.{which}.weight",
                    lambda t, e=e, lo=lo: expect_shape(t, experts, 2 * f)[e, lo : lo + f],
                )
                for e in range(experts)
                for which, lo in (("gate", 0), ("up", f))
            ]
        if leaf == "down_proj":  # [E, H, F]
            return [
                (f"{prefix}.{e}.down.weight", lambda t, e=e: expect_shape(t, experts)[e])
                for e in range(experts)
            ]
        return None


@hookimpl
def plugformer_register(registry):
    registry.register("family", "mixtral", Mixtral, MixtralConfig)
