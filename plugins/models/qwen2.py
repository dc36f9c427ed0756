"""Qwen2 / Qwen2.5 model family (Yang et al., 2024, "Qwen2 Technical Report", arXiv:2407.10671).

A Llama-shaped decoder with biases on the query, key and value projections (not on the output
projection). Sliding-window attention on some layers only (``use_sliding_window`` with
``max_window_layers`` below the layer count) is refused; on all layers it is supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.model.families import LlamaLikeFamily
from plugformer.core.model.hf import hf_value, refuse


@dataclass
class Qwen2Config(FamilyConfig):
    name: str = "qwen2"


def _window(c: dict[str, Any]) -> int | None:
    """The sliding window, if every layer has it; None if none has; refused if some have."""
    layers = hf_value(c, "num_hidden_layers", int)
    types = c.get("layer_types")
    if not isinstance(types, list):  # older configs: derived as transformers does
        window = hf_value(c, "sliding_window", int, None)
        if not hf_value(c, "use_sliding_window", bool, False) or window is None:
            return None
        first = hf_value(c, "max_window_layers", int, layers)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    sliding = [t == "sliding_attention" for t in types]
    if not any(sliding):
        return None
    if not all(sliding):
        raise refuse(
            "use_sliding_window",
            True,
            f"sliding windows on layers {[i for i, s in enumerate(sliding) if s]} only "
            "(max_window_layers / layer_types); plugformer applies one window to every layer",
        )
    return hf_value(c, "sliding_window", int)


class Qwen2(LlamaLikeFamily):
    """The Qwen2 family."""

    architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        return {
            "attention_bias": True,
            "attention_out_bias": False,
            "sliding_window": _window(hf_config),
        }


@hookimpl
def plugformer_register(registry):
    registry.register("family", "qwen2", Qwen2, Qwen2Config)
