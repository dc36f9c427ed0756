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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plugformer.core.interfaces.attention import Attention
from plugformer.core.interfaces.positional import PositionalEncoding
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.build import Parts, default_parts
from plugformer.core.model.decode_step import DecodeAttention
from plugformer.core.model.decode_step import rms_norm as decode_rms_norm
from plugformer.core.model.decode_step import supported as decode_supported
from plugformer.core.model.fuse import concat_linears
from plugformer.core.model.kv_cache import CacheRows, KVCache


@dataclass
class ForwardContext:
    """Computed once per forward pass and shared by every layer."""

    bias: torch.Tensor  # [B, 1|H, S, T] additive attention mask
    rotary: Any  # positional state from PositionalEncoding.prepare
    cache: KVCache | CacheRows | None
    slots: torch.Tensor | None  # [S] cache slots of the new tokens


class SelfAttention(nn.Module):
    """q/k/v/o projections around a plugin attention kernel.

    ``head_range`` (set by tensor parallelism) is the slice of the model's query heads this
    module computes; a per-head positional bias (ALiBi) is cut to it.
    """

    def __init__(
        self, spec: ModelSpec, layer: int, kernel: Attention, positional: PositionalEncoding
    ) -> None:
        super().__init__()
        self.layer = layer
        self.kernel = kernel
        self.positional = positional
        self.num_heads, self.num_kv_heads, self.head_dim = (
            spec.num_heads,
            spec.kv_heads,
            spec.dim_per_head,
        )
        h, bias = spec.hidden_size, spec.attention_bias
        self.wq = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, h, bias=spec.attention_out_bias)
        self.head_range: tuple[int, int] | None = None
        self.wqkv: nn.Module | None = None  # set by fuse_projections()
        self.qkv_sizes: tuple[int, int, int] = (0, 0, 0)
        self._decode: DecodeAttention | bool | None = False  # False: not decided yet

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

    def decode_step(self) -> DecodeAttention | None:
        """The fused float32 CPU decode step for this layer, or None when it cannot apply
        (:mod:`plugformer.core.model.decode_step`); decided on first use."""
        if self._decode is False:
            scale = getattr(getattr(self.kernel, "dims", None), "scale", None)
            ok = self.head_range is None and isinstance(scale, float)
            self._decode = (
                DecodeAttention(self.num_heads, self.num_kv_heads, self.head_dim, scale)
                if ok and decode_supported(self.positional, self.kernel)
                else None
            )
        return self._decode if isinstance(self._decode, DecodeAttention) else None

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
    ) -> None:
        super().__init__()
        self.parallel = spec.parallel_block
        self.attn_norm = parts.norm(spec.hidden_size)
        self.attn = SelfAttention(spec, layer, kernel, positional)
        own_mlp_norm = not spec.parallel_block or spec.parallel_mlp_norm
        self.mlp_norm = parts.norm(spec.hidden_size) if own_mlp_norm else None
        self.mlp = parts.mlp()

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        # x: [B, S, hidden]
        h = _norm(self.attn_norm, x)
        if self.parallel:
            m = _norm(self.mlp_norm, x) if self.mlp_norm is not None else h
            return x + (self.attn(h, ctx) + self.mlp(m))  # Falcon / GPT-J summation order
        x = x + self.attn(h, ctx)
        assert self.mlp_norm is not None
        return x + self.mlp(_norm(self.mlp_norm, x))


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; a decode step (one token) of a plain RMSNorm in one fused call."""
    if x.shape[1] == 1:
        fused = decode_rms_norm(norm, x)
        if fused is not None:
            return fused
    return norm(x)


class Decoder(nn.Module):
    """A decoder-only transformer assembled from a :class:`ModelSpec` and plugin parts.

    ``parts`` makes the MLPs and norms (see :func:`plugformer.core.model.build.build_parts`);
    None resolves them from ``spec.mlp`` / ``spec.norm`` through the default plugin set.
    """

    def __init__(
        self,
        spec: ModelSpec,
        kernel: Attention,
        positional: PositionalEncoding,
        parts: Parts | None = None,
    ) -> None:
        super().__init__()
        spec.validate()
        parts = parts or default_parts(spec)
        self.spec = spec
        self.positional = positional
        windows = [w for w in (spec.sliding_window, getattr(kernel, "window", None)) if w]
        self.window: int | None = min(windows) if windows else None
        self.embed: nn.Embedding | None = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos_embed = (
            nn.Embedding(spec.max_seq_len, spec.hidden_size) if spec.learned_positions else None
        )
        self.embed_norm = parts.norm(spec.hidden_size) if spec.embedding_norm else None
        self.layers = nn.ModuleList(
            Block(spec, i, kernel, positional, parts) for i in range(spec.num_layers)
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
        for name, module in self.named_modules():
            if (name.endswith("_norm") or name == "norm") and hasattr(module, "weight"):
                # scales near one; a norm storing its scale as an offset from one (Gemma's
                # RMSNorm, ``unit_offset``) near zero
                centre = 0.0 if getattr(module, "unit_offset", False) else 1.0
                module.weight.data.normal_(centre, 0.1, generator=generator)

    def set_kernel(self, kernel: Attention) -> None:
        """Run every layer's attention with ``kernel`` (e.g. one built for a rank's heads)."""
        for block in self.layers:
            assert isinstance(block, Block)
            block.attn.kernel = kernel
            block.attn._decode = False  # decided again for the new kernel

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        assert self.embed is not None
        h = self.embed(ids)  # [B, S, hidden]
        if self.spec.embedding_scale is not None:
            # as Gemma: the scale as a float32 tensor cast to the weights' dtype
            h = h * torch.tensor(self.spec.embedding_scale).to(h.dtype)
        if self.pos_embed is not None:
            h = h + self.pos_embed(positions.clamp(min=0))  # padding may sit at position -1
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

    def run_layers(self, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Hidden states [B, S, hidden] through this model's blocks."""
        for block in self.layers:
            h = block(h, ctx)
        return h

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and head: hidden states [B, S, hidden] -> logits [B, S, vocab] (each
        passed through when absent)."""
        if self.norm is not None:
            h = _norm(self.norm, h)
        return self.head(h) if self.head is not None else h

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        valid: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Token ids [B, S] (or hidden states [B, S, hidden] when ``embed`` is None) at
        ``positions`` [B, S] (default 0..S-1) -> logits [B, S, vocab] (or hidden states when
        ``head`` is None). ``valid`` [B, S] marks real tokens (False: padding).
        ``last_only``: norm and head for the last position only -> [B, 1, vocab]."""
        b, s = x.shape[:2]
        if positions is None:
            positions = torch.arange(s, device=x.device).expand(b, s)
        h = self.embed_tokens(x, positions) if self.embed is not None else x  # [B, S, hidden]
        dtype = cache.dtype if cache is not None else h.dtype  # attention's (the cache's)
        h = self.run_layers(h, self.context(positions, valid, cache, dtype))
        return self.finish(h[:, -1:] if last_only else h)


def default_scale(spec: ModelSpec) -> float:
    """The softmax scale of a spec: its ``attention_scale`` or 1/sqrt(head_dim)."""
    if spec.attention_scale is not None:
        return spec.attention_scale
    return 1.0 / math.sqrt(spec.dim_per_head)
