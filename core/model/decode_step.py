"""Fused float32 CPU decode steps (``core/native/attention.c``): rotary self-attention and RMSNorm.

A decode step of :class:`~plugformer.core.model.decoder.SelfAttention` pushes one token per
sequence through about twenty small tensor ops between the q/k/v and output projections
(split, views, the rotary embedding, the cache write, attention, transpose); on the CPU their
dispatch costs more than their arithmetic. :class:`DecodeAttention` does that stretch in one C
call when everything it needs holds, and otherwise says no (returns None) and the layer runs
its ordinary path, which stays the reference:

* the positional encoding is the core :class:`~plugformer.core.model.rotary.Rotary` (RoPE and
  its scaled variants, halves form) with its own ``rotate``;
* the attention kernel declares ``softmax_attention = True`` (it computes exactly
  ``softmax(q k^T * scale + bias) v``, see :mod:`plugformer.core.interfaces.attention`);
* float32 on the CPU, one new token, a :class:`~plugformer.core.model.kv_cache.KVCache` in
  float32, a bias shared by the heads (no ALiBi), all of a layer's heads (no tensor-parallel
  slice), no autograd recording, and the native library available
  (:func:`plugformer.core.native.build.unavailable_reason`; ``PLUGFORMER_NATIVE=0`` switches
  it off).

The keys written to the cache are bit-equal to the ordinary path's; the attention itself sums
in its own order (logits within a few float32 ulps, greedy tokens equal:
tests/quant/test_native.py).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch

from plugformer.core.interfaces.attention import CAPABILITIES as ATTENTION_CAPABILITIES
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.norm import CAPABILITIES as NORM_CAPABILITIES
from plugformer.core.model.kv_cache import KVCache
from plugformer.core.model.rotary import Rotary
from plugformer.core.native import build as native


def supported(positional: Any, kernel: Any) -> bool:
    """Whether a layer with this positional encoding and attention kernel can use the step."""
    return (
        isinstance(positional, Rotary)
        and type(positional).rotate is Rotary.rotate
        and not positional.config.interleaved
        and capability(kernel, ATTENTION_CAPABILITIES, "softmax_attention") is True
        and native.available()
    )


class DecodeAttention:
    """One layer's fused decode step; the C struct is kept and only per-step fields change."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        self.hq, self.hkv, self.d = num_heads, num_kv_heads, head_dim
        self.args = native.Decode(hq=num_heads, hkv=num_kv_heads, d=head_dim, scale=scale)
        self.ref = ctypes.byref(self.args)
        self.call = native.load(False).pf_decode_attention
        self.lock = threading.Lock()

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: Any,
        cache: Any,
        layer: int,
        bias: torch.Tensor,
    ) -> torch.Tensor | None:
        """q [B, 1, Hq * D], k and v [B, 1, Hkv * D] (unit stride along features) -> the
        attention output [B, 1, Hq * D] with the step's key and value in ``cache``; None when
        the step does not apply (the caller runs its ordinary path)."""
        if type(cache) is not KVCache or cache.dtype != torch.float32 or torch.is_grad_enabled():
            return None
        if q.dtype != torch.float32 or q.device.type != "cpu":
            return None
        cos, sin = rotary
        b, filled = q.shape[0], cache.filled
        if bias.shape != (b, 1, 1, filled) or not bias.is_contiguous():
            return None
        if cos.shape[:3] != (b, 1, 1) or not (cos.is_contiguous() and sin.is_contiguous()):
            return None
        if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
            return None
        kc, vc = cache.buffers_for(layer, self.hkv, self.d)
        out = torch.empty((b, 1, self.hq * self.d))
        with self.lock:  # one struct per layer: generations in other threads wait their turn
            a = self.args
            a.q, a.k, a.v = q.data_ptr(), k.data_ptr(), v.data_ptr()
            a.q_sb, a.k_sb, a.v_sb = q.stride(0), k.stride(0), v.stride(0)
            a.cos, a.sin = cos.data_ptr(), sin.data_ptr()
            a.kc, a.vc = kc.data_ptr(), vc.data_ptr()
            a.bias, a.bias_sb, a.out = bias.data_ptr(), filled, out.data_ptr()
            a.b, a.rd, a.cap, a.slot, a.filled = b, cos.shape[-1], cache.length, filled - 1, filled
            failed = self.call(self.ref, torch.get_num_threads())
        if failed:
            raise MemoryError("decode attention: no scratch memory")
        return out


def rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor | None:
    """``norm(x)`` for one decode step [B, 1, dim] in one C call when ``norm`` declares
    ``plain_rms`` (:mod:`plugformer.core.interfaces.norm`), x is float32 on the CPU and
    contiguous, no autograd is recording and the native library is available; None otherwise.
    The sum of squares runs in its own order (a few float32 ulps from torch's)."""
    if not capability(norm, NORM_CAPABILITIES, "plain_rms") or x.dtype != torch.float32:
        return None
    w = norm.weight
    if w.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    if not (x.is_contiguous() and w.is_contiguous()) or not native.available():
        return None
    dim = x.shape[-1]
    y = torch.empty_like(x)
    native.load(False).pf_rmsnorm(
        x.data_ptr(), w.data_ptr(), y.data_ptr(), x.numel() // dim, dim, norm.eps
    )
    return y


class NativeDecodePath:
    """The fused steps above as a decoder's fast path
    (:class:`plugformer.core.model.decoder.FastPath`); the engine hands it to the decoders it
    builds."""

    def attention(self, attn: Any) -> DecodeAttention | None:
        """The step for a :class:`~plugformer.core.model.decoder.SelfAttention` computing all of
        its model's heads with a supported positional encoding and kernel, else None."""
        if attn.head_range is not None or not supported(attn.positional, attn.kernel):
            return None
        return DecodeAttention(attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.scale)

    def norm(self, norm: Any, x: torch.Tensor) -> torch.Tensor | None:
        return rms_norm(norm, x)
