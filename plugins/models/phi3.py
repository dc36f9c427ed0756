"""Phi-3 model family (Abdin et al., 2024, "Phi-3 Technical Report", arXiv:2404.14219).

A Llama-shaped decoder whose checkpoints fuse the query/key/value projections (``qkv_proj``:
query rows, then key rows, then value rows) and the gate/up projections (``gate_up_proj``: gate
rows, then up rows); both are cut into the decoder's separate projections on load. Partial
rotary (``partial_rotary_factor``) and ``sliding_window`` are supported; the ``longrope``
scaling of the 128k models is not (refused by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig, TensorPart, expect_shape
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import llama_layer, sliding_window


@dataclass
class Phi3Config(FamilyConfig):
    name: str = "phi3"


class Phi3(LlamaLikeFamily):
    """The Phi-3 family."""

    architectures = ("Phi3ForCausalLM",)
    model_types = ("phi3",)

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        return {"sliding_window": sliding_window(hf_config)}

    def tensor_parts(self, hf_name: str, spec: ModelSpec) -> list[TensorPart] | None:
        found = llama_layer(hf_name)
        if not found:
            return None
        layer, part, leaf = found
        pieces: list[tuple[str, int, int]]
        if part == "self_attn.qkv_proj":  # rows: [Hq*D | Hkv*D | Hkv*D]
            q, kv = spec.num_heads * spec.dim_per_head, spec.kv_heads * spec.dim_per_head
            pieces = [("wq", 0, q), ("wk", q, kv), ("wv", q + kv, kv)]
        elif part == "mlp.gate_up_proj":  # rows: [F gate | F up]
            f = spec.intermediate_size
            pieces = [("gate", 0, f), ("up", f, f)]
        else:
            return None
        module = "attn" if part.startswith("self_attn") else "mlp"
        rows = sum(n for _, _, n in pieces)
        return [
            (
                f"layers.{layer}.{module}.{ours}.{leaf}",
                lambda t, lo=lo, n=n: expect_shape(t, rows)[lo : lo + n],
            )
            for ours, lo, n in pieces
        ]


@hookimpl
def plugformer_register(registry):
    registry.register("family", "phi3", Phi3, Phi3Config)
