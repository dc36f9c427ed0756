"""The two shapes most model families share, as bases a family plugin subclasses.

:class:`LlamaLikeFamily` is the Llama-shaped decoder (Llama, Mistral, Qwen2, Phi-3, Gemma,
Mixtral): RMSNorm, a gated MLP, grouped-query attention, RoPE and ``model.layers.<n>`` tensor
names; a subclass says only how its config differs. :class:`GPTLikeFamily` is the
``[transformer.]h.<n>`` layout (GPT-2, BLOOM, Falcon): LayerNorm, a plain MLP and a
fused query/key/value tensor; a subclass gives its name tables and reads its own config.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from plugformer.core.interfaces.family import FamilyBase, TensorPart
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.hf import (
    decoder_tp_plan,
    llama_like_spec,
    llama_tensor_name,
    transformer_layer,
)


class LlamaLikeFamily(FamilyBase):
    """A Llama-shaped family. Subclasses set ``architectures``, ``model_types`` and, where they
    differ from Llama, ``activations``, ``mlp`` and :meth:`spec_fields`."""

    #: HF ``hidden_act`` values the family accepts; the first is the default
    activations: ClassVar[tuple[str, ...]] = ("silu",)
    #: the MLP plugin (``gated`` or ``moe``); it also decides the tensor-parallel plan
    mlp: ClassVar[str] = "gated"

    def spec_fields(self, hf_config: dict[str, Any]) -> dict[str, Any]:
        """The spec fields this family sets on top of :func:`llama_like_spec`'s (read, and
        refused where unsupported, before the common fields are)."""
        return {}

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        fields = self.spec_fields(hf_config)
        return llama_like_spec(hf_config, self.activations, mlp=self.mlp, **fields)

    def tensor_name(
        self, hf_name: str, spec: ModelSpec | None = None, hf_config: dict[str, Any] | None = None
    ) -> str | None:
        return llama_tensor_name(hf_name)

    def tp_plan(self) -> dict[str, str]:
        return decoder_tp_plan(self.mlp)


class GPTLikeFamily(FamilyBase):
    """A family with ``[transformer.]h.<n>.<path>`` tensor names (read with and without the
    prefix) and a plain MLP. Subclasses set ``architectures``, ``model_types``, the name tables
    ``top`` and ``parts``, ``fused_qkv`` where q/k/v are one grouped tensor, and write
    ``spec_from_hf``."""

    #: top-level HF names (without ``transformer.``) -> ours
    top: ClassVar[dict[str, str]] = {}
    #: HF module paths inside a layer -> ours
    parts: ClassVar[dict[str, str]] = {}
    #: the layer module whose tensor holds q, k and v grouped per KV head (None: no such tensor)
    fused_qkv: ClassVar[str | None] = None

    def tensor_name(
        self, hf_name: str, spec: ModelSpec | None = None, hf_config: dict[str, Any] | None = None
    ) -> str | None:
        name = hf_name.removeprefix("transformer.")
        if name in self.top:
            return self.top[name]
        found = transformer_layer(hf_name)
        if found and found[1] in self.parts:
            return f"layers.{found[0]}.{self.parts[found[1]]}.{found[2]}"
        return hf_name

    def tensor_parts(self, hf_name: str, spec: ModelSpec) -> list[TensorPart] | None:
        """q, k and v cut out of the ``fused_qkv`` tensor: rows ``[kv_heads, g + 2, head_dim]``,
        per KV group its ``g = heads / kv_heads`` query heads, then its key and value head
        (multi-head: ``[heads, 3, head_dim]``, BLOOM's layout; multi-query: one group)."""
        found = transformer_layer(hf_name)
        if self.fused_qkv is None or not found or found[1] != self.fused_qkv:
            return None
        layer, _, leaf = found
        h, kv, d = spec.num_heads, spec.kv_heads, spec.dim_per_head
        g = h // kv

        def cut(t: torch.Tensor, which: int) -> torch.Tensor:
            rest = t.shape[1:]  # weight [rows, hidden] or bias [rows]
            t = t.reshape(kv, g + 2, d, *rest)  # per KV group: g query heads, a key, a value
            piece = t[:, :g] if which == 0 else t[:, g + which - 1]
            return piece.reshape(-1, *rest)

        return [
            (f"layers.{layer}.attn.{ours}.{leaf}", lambda t, i=i: cut(t, i))
            for i, ours in enumerate(("wq", "wk", "wv"))
        ]

    def tp_plan(self) -> dict[str, str]:
        return decoder_tp_plan("plain")
