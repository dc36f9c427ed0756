"""The generic decoder's architecture: plain data, validated before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plugformer.core.errors import ConfigError

NORMS = ("rmsnorm", "layernorm")
MLPS = ("gated", "plain")  # gated: down(act(gate(x)) * up(x)); plain: down(act(up(x)))
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
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
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gated"
    activation: str = "silu"  # gated + silu is SwiGLU, gated + gelu_tanh is GeGLU
    attention_bias: bool = False  # biases on q/k/v
    attention_out_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    norm_bias: bool = True  # layernorm only
    parallel_block: bool = False  # attention and MLP read the same normed input (GPT-J, Falcon)
    tie_embeddings: bool = False
    embedding_norm: bool = False  # a norm right after the embedding (BLOOM)
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)
    # the model's own attention and positional encoding (registry names and config values),
    # used when the config selects `attention=auto` / `positional=auto` (the default)
    attention: str = "gqa"
    attention_args: dict[str, Any] = field(default_factory=dict)
    positional: str = "rope"
    positional_args: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def dim_per_head(self) -> int:
        if self.head_dim is not None:
            return self.head_dim
        return self.hidden_size // self.num_heads

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
        if self.norm not in NORMS:
            raise ConfigError(f"{k('norm')}: {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.mlp not in MLPS:
            raise ConfigError(f"{k('mlp')}: {self.mlp!r} is not one of {', '.join(MLPS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"{k('activation')}: {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"{k('norm_eps')}: expected a positive float, got {self.norm_eps!r}")
