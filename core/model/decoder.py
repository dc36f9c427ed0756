"""The generic decoder: embedding, blocks of norm -> attention -> residual -> norm -> MLP ->
residual, final norm, head. Attention kernels, positional encodings, MLPs and norms come from
plugins; the decoder itself imports none (its MLP and norm factories arrive as :class:`Parts`).

Missing parts pass through (``embed``, ``norm`` or ``head`` set to None), so a pipeline stage is
the same model with layers removed.

Sliding windows: a key at position j is visible to a query at position i when
``0 <= i - j < window``. The window is the model's (``spec.sliding_window``, from its
checkpoint) or the attention kernel's (an optional ``window`` attribute, e.g.
``attention.sliding_window``), the smaller when both are set. It is part of the mask built from
positions in :meth:`Decoder.context`, so it holds through the KV cache too.

Fast paths: whoever builds the decoder may hand in a :class:`FastPath` (the engine passes the
native fused decode steps of :mod:`plugformer.core.model.decode_step`); each of its steps says
None where it does not apply, and the plain torch path below stays the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.utils.checkpoint
from torch import nn

from plugformer.core.interfaces.attention import CAPABILITIES as ATTENTION_CAPABILITIES
from plugformer.core.interfaces.attention import Attention
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.norm import CAPABILITIES as NORM_CAPABILITIES
from plugformer.core.interfaces.positional import CAPABILITIES as POSITIONAL_CAPABILITIES
from plugformer.core.interfaces.positional import PositionalEncoding
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.build import Parts, on_meta
from plugformer.core.model.fuse import concat_linears
from plugformer.core.model.kv_cache import CacheRows, KVCache

#: one layer's fused decode step: (q, k, v, positional state, cache, layer, bias) -> the
#: attention output [B, 1, Hq * D], or None when it does not apply to this call
AttentionStep = Callable[..., torch.Tensor | None]


class FastPath(Protocol):
    """Fused steps a decoder may use instead of its plain torch ops (handed in by its builder)."""

    def attention(self, attn: SelfAttention) -> AttentionStep | None:
        """The fused decode step for this layer, or None when it can never apply (decided
        once per layer, on first use)."""
        ...

    def norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """``norm(x)`` for one decode step x [B, 1, dim], or None when it does not apply."""
        ...


@dataclass
class ForwardContext:
    """Computed once per forward pass and shared by every layer."""

    bias: torch.Tensor  # [B, 1|H, S, T] additive attention mask
    rotary: Any  # positional state from PositionalEncoding.prepare
    cache: KVCache | CacheRows | None
    slots: torch.Tensor | None  # [S] cache slots of the new tokens


class SelfAttention(nn.Module):
    """q/k/v/o projections around a plugin attention kernel.

    ``head_range`` is the slice of the model's query heads this module computes, over
    ``kv_heads`` KV heads (tensor parallelism swaps in such a module, :meth:`for_heads`); a
    per-head positional bias (ALiBi) is cut to it. None: all of them.
    """

    positional: PositionalEncoding  # the decoder's, shared (not registered here)

    def __init__(
        self,
        spec: ModelSpec,
        layer: int,
        kernel: Attention,
        positional: PositionalEncoding,
        fast: FastPath | None = None,
        head_range: tuple[int, int] | None = None,
        kv_heads: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.layer = layer
        self.kernel = kernel
        # owned (registered) by the decoder: set without registering here, so a positional
        # encoding with weights (learned positions) has one name, ``positional.<name>``
        object.__setattr__(self, "positional", positional)
        self.fast = fast
        self.scale = default_scale(spec)  # the kernel's dims.scale (the engine builds it so)
        self.head_range = head_range
        self.num_heads = spec.num_heads if head_range is None else head_range[1] - head_range[0]
        self.num_kv_heads = spec.kv_heads if kv_heads is None else kv_heads
        self.head_dim = spec.dim_per_head
        h, bias = spec.hidden_size, spec.attention_bias
        self.wq = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, h, bias=spec.attention_out_bias)
        self.wqkv: nn.Module | None = None  # set by fuse_projections()
        self.qkv_sizes: tuple[int, int, int] = (0, 0, 0)
        self._decode: AttentionStep | bool | None = False  # False: not decided yet

    def for_heads(self, head_range: tuple[int, int], kv_heads: int) -> SelfAttention:
        """This layer computing query heads ``head_range`` over ``kv_heads`` KV heads (tensor
        parallel): a new module with the same kernel, positional encoding and projection
        modules (the caller then cuts those to the heads), to swap in for this one."""
        with on_meta():  # its own projections are replaced right away
            new = SelfAttention(
                self.spec, self.layer, self.kernel, self.positional, self.fast, head_range, kv_heads
            )
        new.wq, new.wk, new.wv, new.wo = self.wq, self.wk, self.wv, self.wo
        return new

    def fuse_projections(self) -> bool:
        """Replace wq, wk, wv by one layer (see :mod:`plugformer.core.model.fuse`)."""
        parts = [self.wq, self.wk, self.wv]
        fused = concat_linears(parts)
        if fused is None:
            return False
        self.qkv_sizes = tuple(int(m.out_features) for m in parts)  # type: ignore[assignment]
        self.wqkv = fused
        del self.wq, self.wk, self.wv
        return True

    def decode_step(self) -> AttentionStep | None:
        """The fast path's fused decode step for this layer, or None when there is none;
        decided on first use."""
        if self._decode is False:
            self._decode = self.fast.attention(self) if self.fast is not None else None
        return self._decode if callable(self._decode) else None

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, s, _ = x.shape  # x: [B, S, hidden]
        if self.wqkv is not None:
            q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        step = self.decode_step() if s == 1 and ctx.cache is not None else None
        if step is not None:  # one C call from the projections to the output projection
            out = step(q, k, v, ctx.rotary, ctx.cache, self.layer, ctx.bias)
            if out is not None:
                return self.wo(out if out.dtype == x.dtype else out.to(x.dtype))
        q = q.view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, Hq, S, D]
        k = k.view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        v = v.view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        q, k = self.positional.rotate(q, k, ctx.rotary)
        if ctx.cache is not None and ctx.slots is not None:
            k, v = ctx.cache.update(self.layer, ctx.slots, k, v)  # [B, Hkv, T, D]
        bias = ctx.bias  # [B, 1|H, S, T], in the dtype of k (the cache's)
        if self.head_range is not None and bias.shape[1] > 1:
            bias = bias[:, self.head_range[0] : self.head_range[1]]
        if q.dtype != k.dtype:
            q = q.to(k.dtype)
        out = self.kernel(q, k, v, bias)  # [B, Hq, S, D]
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))  # [B, S, hidden]


class Block(nn.Module):
    """One decoder layer: sequential, or parallel attention and MLP (one shared norm, or one
    each with ``parallel_mlp_norm``)."""

    def __init__(
        self,
        spec: ModelSpec,
        layer: int,
        kernel: Attention,
        positional: PositionalEncoding,
        parts: Parts,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__()
        self.parallel = spec.parallel_block
        self.fast = fast
        self.attn_norm = parts.norm(spec.hidden_size)
        self.attn = SelfAttention(spec, layer, kernel, positional, fast)
        own_mlp_norm = not spec.parallel_block or spec.parallel_mlp_norm
        self.mlp_norm = parts.norm(spec.hidden_size) if own_mlp_norm else None
        self.mlp = parts.mlp()

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        # x: [B, S, hidden]
        h = _norm(self.attn_norm, x, self.fast)
        if self.parallel:
            m = _norm(self.mlp_norm, x, self.fast) if self.mlp_norm is not None else h
            return x + (self.attn(h, ctx) + self.mlp(m))  # Falcon / GPT-J summation order
        x = x + self.attn(h, ctx)
        assert self.mlp_norm is not None
        return x + self.mlp(_norm(self.mlp_norm, x, self.fast))


def _norm(norm: nn.Module, x: torch.Tensor, fast: FastPath | None) -> torch.Tensor:
    """``norm(x)``; a decode step (one token) through the fast path's fused norm if it has one."""
    if fast is not None and x.shape[1] == 1:
        fused = fast.norm(norm, x)
        if fused is not None:
            return fused
    return norm(x)


class Decoder(nn.Module):
    """A decoder-only transformer assembled from a :class:`ModelSpec` and plugin parts.

    ``parts`` makes the MLPs and norms (see :func:`plugformer.core.model.build.build_parts`,
    which resolves them through a registry); ``fast`` is an optional :class:`FastPath`.
    """

    def __init__(
        self,
        spec: ModelSpec,
        kernel: Attention,
        positional: PositionalEncoding,
        parts: Parts,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.positional = positional
        self.fast = fast
        self.activation_checkpointing = False
        kernel_window = capability(kernel, ATTENTION_CAPABILITIES, "window")
        windows = [w for w in (spec.sliding_window, kernel_window) if w]
        self.window: int | None = min(windows) if windows else None
        self.embed: nn.Embedding | None = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.embed_norm = parts.norm(spec.hidden_size) if spec.embedding_norm else None
        self.layers = nn.ModuleList(
            Block(spec, i, kernel, positional, parts, fast) for i in range(spec.num_layers)
        )
        self.norm: nn.Module | None = parts.norm(spec.hidden_size)
        self.head: nn.Linear | None = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.head.weight = self.embed.weight

    def init_weights(self, generator: torch.Generator, std: float = 0.02) -> None:
        """Random weights for a model without a checkpoint (tests, ``model=tiny``)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_(0.0, std, generator=generator)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.normal_(0.0, std, generator=generator)
        if isinstance(self.positional, nn.Module):  # learned positions, like the embeddings
            for p in self.positional.parameters():
                p.data.normal_(0.0, std, generator=generator)
        for name, module in self.named_modules():
            if (name.endswith("_norm") or name == "norm") and hasattr(module, "weight"):
                # scales near one; a norm storing its scale as an offset from one (Gemma's
                # RMSNorm, ``unit_offset``) near zero
                centre = 0.0 if capability(module, NORM_CAPABILITIES, "unit_offset") else 1.0
                module.weight.data.normal_(centre, 0.1, generator=generator)

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        assert self.embed is not None
        h = self.embed(ids)  # [B, S, hidden]
        if self.spec.embedding_scale is not None:
            # as Gemma: the scale as a float32 tensor cast to the weights' dtype
            h = h * torch.tensor(self.spec.embedding_scale).to(h.dtype)
        absolute = capability(self.positional, POSITIONAL_CAPABILITIES, "embed")
        if absolute is not None:  # learned or fixed absolute positions (GPT-2, sinusoidal)
            h = h + absolute(positions.clamp(min=0)).to(h.dtype)  # padding may sit at -1
        if self.embed_norm is not None:
            h = self.embed_norm(h)
        return h

    def context(
        self,
        positions: torch.Tensor,
        valid: torch.Tensor | None,
        cache: KVCache | CacheRows | None,
        dtype: torch.dtype,
    ) -> ForwardContext:
        """The mask, positional state and cache slots of one forward pass over ``positions``
        [B, S] (reserves the slots of the new tokens in ``cache``)."""
        if cache is not None:
            slots = cache.advance(positions, valid)
            k_pos = cache.filled_pos  # [B, T]: the slots filled so far
        else:
            slots = None
            k_pos = positions if valid is None else positions.masked_fill(~valid, -1)
        k_valid = k_pos >= 0  # [B, T]
        behind = positions.unsqueeze(2) - k_pos.unsqueeze(1)  # [B, S, T] query - key position
        allowed = k_valid.unsqueeze(1) & (behind >= 0)  # [B, S, T]
        if self.window is not None:
            allowed = allowed & (behind < self.window)
        # a padding query may see nothing: let it see everything instead of producing NaN
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
        bias = bias.masked_fill(~allowed, float("-inf")).unsqueeze(1)  # [B, 1, S, T]
        extra = self.positional.bias(positions, k_pos)
        if extra is not None:
            bias = bias + extra.to(dtype)  # [B, H, S, T]
        return ForwardContext(bias, self.positional.prepare(positions), cache, slots)

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them
        (training: less memory, one more forward per block; the gradients are the same)."""
        self.activation_checkpointing = on

    def run_layers(self, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Hidden states [B, S, hidden] through this model's blocks."""
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers:
            if recompute:
                h = torch.utils.checkpoint.checkpoint(block, h, ctx, use_reentrant=False)
            else:
                h = block(h, ctx)
        return h

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and head: hidden states [B, S, hidden] -> logits [B, S, vocab] (each
        passed through when absent)."""
        if self.norm is not None:
            h = _norm(self.norm, h, self.fast)
        return self.head(h) if self.head is not None else h

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        valid: torch.Tensor | None = None,
        last_only: bool = False,
        hidden_only: bool = False,
    ) -> torch.Tensor:
        """Token ids [B, S] (or hidden states [B, S, hidden] when ``embed`` is None) at
        ``positions`` [B, S] (default 0..S-1) -> logits [B, S, vocab] (or hidden states when
        ``head`` is None). ``valid`` [B, S] marks real tokens (False: padding).
        ``last_only``: norm and head for the last position only -> [B, 1, vocab].
        ``hidden_only``: the last layer's hidden states [B, S, hidden], before the final norm
        and head (:meth:`finish`; the trainer's loss applies them a chunk at a time)."""
        b, s = x.shape[:2]
        if positions is None:
            positions = torch.arange(s, device=x.device).expand(b, s)
        h = self.embed_tokens(x, positions) if self.embed is not None else x  # [B, S, hidden]
        dtype = cache.dtype if cache is not None else h.dtype  # attention's (the cache's)
        h = self.run_layers(h, self.context(positions, valid, cache, dtype))
        if hidden_only:
            return h
        return self.finish(h[:, -1:] if last_only else h)


def default_scale(spec: ModelSpec) -> float:
    """The softmax scale of a spec: its ``attention_scale`` or 1/sqrt(head_dim)."""
    if spec.attention_scale is not None:
        return spec.attention_scale
    return 1.0 / math.sqrt(spec.dim_per_head)
