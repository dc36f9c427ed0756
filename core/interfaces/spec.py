"""The generic decoder's architecture (:class:`ModelSpec`): plain data, validated before anything
is built, and the names of the decoder's tensors.

Every model family builds one from a checkpoint's ``config.json`` (``spec_from_hf``); without a
checkpoint it comes from ``model.spec.*`` (``model=tiny``). The fields:

=====================  ===============  ========  ==============================================
field                  type             default   meaning (families that set it)
=====================  ===============  ========  ==============================================
vocab_size             int              0         token embeddings and logits (all; required)
hidden_size            int              0         width of the residual stream (all; required)
num_layers             int              0         decoder blocks, at most 1024 (all; required)
num_heads              int              0         query heads (all; required)
num_kv_heads           int | None       None      key/value heads; None: num_heads (Llama-like
                                                  GQA, Falcon multi-query)
head_dim               int | None       None      None: hidden_size // num_heads (Gemma sets it)
intermediate_size      int              0         MLP width, per expert for MoE (all; required)
max_seq_len            int              2048      context length: KV cache size, position limit
norm_eps               float            1e-5      added to the variance in every norm
activation             str              silu      MLP activation, a key of ACTIVATIONS (gelu_tanh:
                                                  Gemma, gelu_new: GPT-2, gelu_bloom: BLOOM)
attention_bias         bool             False     biases on q/k/v (Qwen2, GPT-2, BLOOM, Falcon)
attention_out_bias     bool             False     bias on the output projection (GPT-2, BLOOM)
mlp_bias               bool             False     biases in the MLP (GPT-2, BLOOM, Falcon)
parallel_block         bool             False     attention and MLP read the same input (Falcon)
parallel_mlp_norm      bool             False     parallel blocks: the MLP has its own norm
                                                  (Falcon 40B+); needs parallel_block
tie_embeddings         bool             False     the head shares the embedding (SmolLM2, Gemma,
                                                  GPT-2, BLOOM)
embedding_norm         bool             False     a norm right after the embedding (BLOOM)
embedding_scale        float | None     None      multiplies the embeddings (Gemma: sqrt(hidden))
learned_positions      bool             False     contract 1.x spelling of positional=learned
                                                  (read as it, with a DeprecationWarning)
attention_scale        float | None     None      softmax scale; None: 1/sqrt(head_dim)
sliding_window         int | None       None      a query sees itself and the window - 1 keys
                                                  before it (Mistral, Qwen2 when enabled)
attention              str              gqa       attention plugin for ``attention=auto``
attention_args         dict             {}        its config fields (``window`` ...)
positional             str              rope      positional plugin for ``positional=auto``
                                                  (alibi: BLOOM; learned: GPT-2; rope_*: scaled
                                                  RoPE of Llama 3.1, YaRN, ...)
positional_args        dict             {}        its config fields (``theta``, ``rotary_dim``)
mlp                    str              gated     MLP plugin: gated (Llama-like), plain (GPT-2,
                                                  BLOOM, Falcon), moe (Mixtral)
mlp_args               dict             {}        its config fields (``num_experts``, ``top_k``)
norm                   str              rmsnorm   norm plugin: rmsnorm, layernorm (GPT-like)
norm_args              dict             {}        its config fields (``unit_offset``: Gemma)
=====================  ===============  ========  ==============================================

The decoder's tensor names (what a family's ``tensor_name`` maps checkpoint names to), for
layer ``i``; biases are ``.bias`` beside ``.weight`` where the spec has them::

    embed.weight                         [vocab, hidden]
    positional.<name>                    a positional plugin's own weights (learned: .weight)
    embed_norm.weight / .bias            embedding_norm
    layers.{i}.attn_norm.weight / .bias
    layers.{i}.attn.wq.weight            [num_heads * head_dim, hidden]
    layers.{i}.attn.wk.weight            [kv_heads * head_dim, hidden]   (and wv)
    layers.{i}.attn.wo.weight            [hidden, num_heads * head_dim]
    layers.{i}.mlp_norm.weight / .bias   absent for parallel blocks without parallel_mlp_norm
    layers.{i}.mlp.<the MLP plugin's>    gated: gate, up, down; plain: up, down;
                                         moe: router, experts.{e}.gate / up / down
    norm.weight / .bias                  the final norm
    head.weight                          [vocab, hidden]; not in the checkpoint when tied

A quantized linear layer (GPTQ layout) has ``.qweight``, ``.qzeros`` (or ``.offsets``),
``.scales`` and ``.g_idx`` in place of ``.weight``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.mlp import ACTIVATIONS

MAX_LAYERS = 1024  # far above any published decoder; guards against absurd configs


@dataclass
class ModelSpec:
    """Sizes and switches of the generic decoder (see DESIGN.md, Models)."""

    vocab_size: int = 0
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    num_kv_heads: int | None = None  # None: same as num_heads (MHA)
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int = 0
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    activation: str = "silu"  # gated + silu is SwiGLU, gated + gelu_tanh is GeGLU
    attention_bias: bool = False  # biases on q/k/v
    attention_out_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    parallel_block: bool = False  # attention and MLP read the same input (GPT-J, Falcon)
    parallel_mlp_norm: bool = False  # parallel blocks: the MLP has its own norm (Falcon 40B+)
    tie_embeddings: bool = False
    embedding_norm: bool = False  # a norm right after the embedding (BLOOM)
    embedding_scale: float | None = None  # multiply the embedding output (Gemma: sqrt(hidden))
    # contract 1.x: learned absolute positions; 2.0 spells it positional="learned" (the
    # positional plugin owns the weight, positional.weight); true is read as that, with a warning
    learned_positions: bool = False
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)
    # a query sees itself and the sliding_window - 1 keys before it (Mistral); None: all
    sliding_window: int | None = None
    # the model's parts: registry names and their config values. Attention and positional are
    # used when the config selects `attention=auto` / `positional=auto` (the default); the MLP
    # and norm always (they own weights, so they are the checkpoint's, not a runtime choice)
    attention: str = "gqa"
    attention_args: dict[str, Any] = field(default_factory=dict)
    positional: str = "rope"
    positional_args: dict[str, Any] = field(default_factory=dict)
    mlp: str = "gated"  # gated: down(act(gate(x)) * up(x)); plain: down(act(up(x))); moe
    mlp_args: dict[str, Any] = field(default_factory=dict)
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_args: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def dim_per_head(self) -> int:
        if self.head_dim is not None:
            return self.head_dim
        return self.hidden_size // self.num_heads

    def upgraded(self, where: str = "model.spec") -> ModelSpec:
        """This spec with contract 1.x fields in their 2.0 form: ``learned_positions: true``
        becomes ``positional: learned`` (a DeprecationWarning says so)."""
        if not self.learned_positions:
            return self
        if self.positional not in ("none", "learned"):
            raise ConfigError(
                f"{where}.learned_positions: true cannot combine with {where}.positional="
                f"{self.positional}; learned positions are {where}.positional=learned"
            )
        warnings.warn(
            f"{where}.learned_positions is deprecated (contract 2.0): use "
            f"{where}.positional=learned",
            DeprecationWarning,
            stacklevel=2,
        )
        return dataclasses.replace(self, positional="learned", learned_positions=False)

    def validate(self, where: str = "model", names: dict[str, str] | None = None) -> None:
        """Raise :class:`ConfigError` naming the first bad key (``where.<key>``; ``names``
        maps our field names to the caller's, e.g. ``num_layers`` -> ``num_hidden_layers``)."""
        names = names or {}

        def k(field_name: str) -> str:
            return f"{where}.{names.get(field_name, field_name)}"

        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{k(key)}: expected a positive integer, got {value!r}")
        if self.num_layers > MAX_LAYERS:
            raise ConfigError(
                f"{k('num_layers')}: {self.num_layers} is absurd (at most {MAX_LAYERS})"
            )
        if self.max_seq_len <= 0:
            raise ConfigError(
                f"{k('max_seq_len')}: expected a positive integer, got {self.max_seq_len!r}"
            )
        if self.num_kv_heads is not None and self.num_kv_heads <= 0:
            raise ConfigError(
                f"{k('num_kv_heads')}: expected a positive integer, got {self.num_kv_heads!r}"
            )
        if self.num_heads % self.kv_heads:
            raise ConfigError(
                f"{k('num_kv_heads')}: {self.kv_heads} does not divide "
                f"{k('num_heads')}={self.num_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{k('hidden_size')}: {self.hidden_size} is not divisible by "
                f"{k('num_heads')}={self.num_heads}"
            )
        if self.head_dim is not None and self.head_dim <= 0:
            raise ConfigError(
                f"{k('head_dim')}: expected a positive integer, got {self.head_dim!r}"
            )
        for key in ("attention", "positional", "mlp", "norm"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"{k(key)}: expected a registry name, got {getattr(self, key)!r}")
            args = getattr(self, f"{key}_args")
            if not isinstance(args, dict):
                raise ConfigError(f"{k(key + '_args')}: expected a mapping, got {args!r}")
        if self.sliding_window is not None and (
            isinstance(self.sliding_window, bool)
            or not isinstance(self.sliding_window, int)
            or self.sliding_window <= 0
        ):
            raise ConfigError(
                f"{k('sliding_window')}: expected a positive integer or null, "
                f"got {self.sliding_window!r}"
            )
        if self.parallel_mlp_norm and not self.parallel_block:
            raise ConfigError(
                f"{k('parallel_mlp_norm')}: true needs {k('parallel_block')}: true "
                "(a sequential block always has its own MLP norm)"
            )
        if self.embedding_scale is not None and not (
            isinstance(self.embedding_scale, (int, float)) and 0 < self.embedding_scale < math.inf
        ):
            raise ConfigError(
                f"{k('embedding_scale')}: expected a positive number or null, "
                f"got {self.embedding_scale!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"{k('activation')}: {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"{k('norm_eps')}: expected a positive float, got {self.norm_eps!r}")
