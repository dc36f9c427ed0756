"""The forward kernels of quantized layers, chosen per input device and dtype (see
:mod:`plugformer.core.quant.linear` for the measurements behind the choice). A kernel reads its
layer as a :class:`~plugformer.core.quant.layout.QuantLayout` (plain tensors and sizes).

* ``native``: plugformer's own CPU kernel (:mod:`plugformer.core.native.build`, AVX-512 VNNI):
  4- or 8-bit weights in groups of a multiple of 32, activations quantized per 32 features to
  int8 (llama.cpp's scheme), the offset term exact; preferred on the CPU for bf16/fp16;
* ``torch_int4``: ``torch._weight_int4pack_mm_for_cpu`` (bf16/fp16 activations, 4 bits, group
  sizes 32-256, act-order through an input permutation); it computes ``(q - 8) * s + z``;
* ``torch_int8``: ``torch._weight_int8pack_mm`` (bf16/fp16, 8 bits per channel) plus a rank-1
  zero-point correction;
* ``triton``: the GPU dequant-matmul of :mod:`plugformer.core.quant.triton_matmul`;
* ``dequant``: the weight dequantized once into an ``F.linear`` weight (float32 uses this: the
  exact reference); ``reference``: dequantized on every call (no float copy kept).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from plugformer.core.native import build as native
from plugformer.core.quant.layout import QuantLayout
from plugformer.core.quant.pack import pack, unpack

INT4_GROUPS = (256, 128, 64, 32)  # group sizes torch's int4 CPU op accepts
Forward = Callable[[torch.Tensor], torch.Tensor]


class Kernel:
    """A layer's forward function and the tensors it keeps alive besides the layer's buffers
    (its own copy of the weight in the op's layout), so that memory can be accounted for."""

    def __init__(
        self,
        fn: Forward,
        held: tuple[torch.Tensor | None, ...] = (),
        keep: object = None,
        qweight: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.fn = fn
        self.held = tuple(t for t in held if t is not None)
        self.keep = keep  # anything else ``fn`` needs alive (a C struct pointing into ``held``)
        # rebuilds the layer's ``qweight`` from ``held`` (None: the kernel cannot): with it the
        # layer may drop its own copy (QuantLinear keeps one copy of the integer weights)
        self.qweight = qweight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _contiguous_groups(m: QuantLayout) -> tuple[torch.Tensor | None, int] | None:
    """(permutation of the input features that makes groups contiguous, or None when they
    already are; the group size) or None when groups are not of equal size."""
    k = m.in_features
    if m.groups == 1:
        return None, k
    gs = k // m.groups
    if gs * m.groups != k:
        return None
    g = m.g_idx.long()
    expected = torch.arange(k, device=g.device) // gs
    if torch.equal(g, expected):
        return None, gs
    perm = torch.argsort(g, stable=True)
    return (perm, gs) if torch.equal(g[perm], expected) else None


def int4_plan(m: QuantLayout) -> tuple[torch.Tensor | None, int] | None:
    """How torch's int4 CPU op can run this layer: (input permutation, op group size)."""
    if m.bits != 4 or m.out_features % 16:
        return None
    layout = _contiguous_groups(m)
    if layout is None:
        return None
    perm, gs = layout
    if m.groups == 1:  # per channel: repeat the one group over op-sized groups
        gs = next((s for s in INT4_GROUPS if m.in_features % s == 0), 0)
    return (perm, gs) if gs in INT4_GROUPS else None


def _with_bias(
    fn: Forward, m: QuantLayout, dtype: torch.dtype, held: tuple[torch.Tensor | None, ...]
) -> Kernel:
    bias = None if m.bias is None else m.bias.to(dtype)
    out_features = m.out_features

    def run(x: torch.Tensor) -> torch.Tensor:
        y = fn(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], out_features)
        return y if bias is None else y + bias

    return Kernel(run, (*held, bias))


def _int4_kernel(m: QuantLayout, dtype: torch.dtype) -> Kernel:
    plan = int4_plan(m)
    assert plan is not None
    perm, gs = plan
    q = m.int_weight()  # [in, out]
    if perm is not None:
        q = q[perm]
    q = q.t().contiguous()  # [out, in]; the [in, out] temporary is freed here
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 2)
    del q
    s, o = m.scales_offsets()  # [groups, out]
    if m.groups == 1:
        s, o = s.expand(m.in_features // gs, -1), o.expand(m.in_features // gs, -1)
    # torch's int4 op computes (q - 8) * scale + zero
    scale_zero = torch.stack([s, o + 8 * s], dim=-1).to(dtype).contiguous()  # [G, out, 2]

    def mm(x2: torch.Tensor) -> torch.Tensor:
        if perm is not None:
            x2 = x2.index_select(1, perm)
        return torch._weight_int4pack_mm_for_cpu(x2.contiguous(), packed, gs, scale_zero)

    return _with_bias(mm, m, dtype, (packed, scale_zero, perm))


def int8_ok(m: QuantLayout) -> bool:
    return m.bits == 8 and m.groups == 1 and m.in_features % 16 == 0


def int8_weights(m: QuantLayout) -> torch.Tensor:
    """``q - 128`` as int8 [out, in] for an 8-bit layer, read from the bytes of ``qweight``
    (four values per int32 word, the first in the lowest byte) without an int32 [in, out]
    intermediate: a 49152-row head needs 56 MB of temporaries instead of 250 MB."""
    k, n = m.in_features, m.out_features
    if sys.byteorder != "little":
        return (m.int_weight().t() - 128).to(torch.int8).contiguous()
    b = m.qweight.contiguous().view(torch.uint8)  # [k / 4, n * 4]: each word's 4 bytes
    b = b.view(k // 4, n, 4).permute(1, 0, 2).reshape(n, k)  # [n, k] unsigned q
    return torch.bitwise_xor(b, 0x80).view(torch.int8)  # q - 128


def _int8_kernel(m: QuantLayout, dtype: torch.dtype) -> Kernel:
    w8 = int8_weights(m)  # [out, in]
    s, o = m.scales_offsets()
    scale = s[0].to(dtype)
    corr = o[0] + 128 * s[0]  # W = s * (q - 128) + corr
    correction = corr.to(dtype) if bool(corr.any()) else None

    def mm(x2: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x2.contiguous(), w8, scale)
        return y if correction is None else y + x2.sum(-1, keepdim=True) * correction

    return _with_bias(mm, m, dtype, (w8, scale, correction))


NATIVE_BITS = (4, 8)
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def native_plan(m: QuantLayout) -> tuple[torch.Tensor | None, int] | None:
    """How the native kernel can run this layer: (input permutation, group size), or None
    (it needs 4 or 8 bits, ``in_features % 32 == 0`` and equal groups of a multiple of 32)."""
    if m.bits not in NATIVE_BITS or m.in_features % 32:
        return None
    layout = _contiguous_groups(m)
    if layout is None or layout[1] % 32:
        return None
    return layout


#: output rows packed at a time: bounds the temporaries of a 49152-row head to a few MB
PACK_ROWS = 4096


def _unsigned_rows(m: QuantLayout, r0: int, r1: int) -> torch.Tensor:
    """The integer weights of output rows r0..r1-1 as uint8 [r1 - r0, in]."""
    words = m.qweight[:, r0:r1]  # [in * bits / 32, rows]
    if m.bits == 8 and sys.byteorder == "little":  # the bytes are the values: no unpacking
        b = words.contiguous().view(torch.uint8)  # [in / 4, rows * 4]
        return b.view(-1, r1 - r0, 4).permute(1, 0, 2).reshape(r1 - r0, -1)
    return unpack(words, m.bits, dim=0).t().to(torch.uint8)


def native_arrays(m: QuantLayout) -> dict[str, torch.Tensor | None]:
    """``m``'s weights in the native kernel's layout (core/native/qmatmul.c): tiles of 16 output
    rows holding 4 input features per row and int32 lane, scales and offsets per tile. Packed
    :data:`PACK_ROWS` rows at a time."""
    plan = native_plan(m)
    assert plan is not None
    perm = plan[0]
    n, k = m.out_features, m.in_features
    tiles = -(-n // 16)
    per_row = k // 4 if m.bits == 8 else k // 8
    w = torch.empty((tiles, per_row, 16, 4), dtype=torch.uint8)
    for r0 in range(0, n, PACK_ROWS):
        r1 = min(n, r0 + PACK_ROWS)
        q = _unsigned_rows(m, r0, r1)  # [rows, k]
        if perm is not None:
            q = q[:, perm]
        t0, t1 = r0 // 16, -(-r1 // 16)
        if (t1 - t0) * 16 != r1 - r0:
            q = F.pad(q, (0, 0, 0, (t1 - t0) * 16 - (r1 - r0)))
        if m.bits == 8:  # [T, K/4, 16, 4]
            w[t0:t1] = q.view(t1 - t0, 16, per_row, 4).permute(0, 2, 1, 3)
        else:  # [T, K/8, 16, 4]: low nibbles features 8p..8p+3, high nibbles 8p+4..8p+7
            v = q.view(t1 - t0, 16, per_row, 2, 4).permute(0, 2, 1, 4, 3)
            w[t0:t1] = torch.bitwise_or(v[..., 0], torch.bitwise_left_shift(v[..., 1], 4))
        del q
    s, o = m.scales_offsets()  # [groups, n] float32
    s16 = s.to(torch.float16)
    if not torch.equal(s16.float(), s):
        raise ValueError(f"scales of {m.extra_repr()} are not float16 values")
    o16 = o.to(torch.float16)
    offsets = o16 if torch.equal(o16.float(), o) else o  # exact either way

    def per_tile(t: torch.Tensor) -> torch.Tensor:  # [groups, n] -> [T, groups, 16]
        t = F.pad(t, (0, tiles * 16 - n))
        return t.t().reshape(tiles, 16, -1).permute(0, 2, 1).contiguous()

    bias = None if m.bias is None else m.bias.float().contiguous()
    return {
        "w": w,
        "s": per_tile(s16),
        "o": per_tile(offsets),
        "bias": bias,
        "perm": None if perm is None else perm.to(torch.int64).contiguous(),
    }


def native_qweight(
    n: int, k: int, bits: int, w: torch.Tensor, perm: torch.Tensor | None
) -> torch.Tensor:
    """``qweight`` [k * bits / 32, n] rebuilt from the native layout ``w`` (the inverse of
    :func:`native_arrays`), so that a layer can keep one copy of its integer weights."""
    if bits == 8:  # [T, K/4, 16, 4] -> [T*16, K]
        q = w.permute(0, 2, 1, 3).reshape(-1, k)
    else:  # [T, K/8, 16, 4] nibbles -> [T, 16, K/8, 2, 4] -> [T*16, K]
        halves = torch.stack((torch.bitwise_and(w, 15), torch.bitwise_right_shift(w, 4)), dim=-1)
        q = halves.permute(0, 2, 1, 4, 3).reshape(-1, k)
    q = q[:n]
    if perm is not None:  # columns are in the permuted order: put them back
        q = q[:, torch.argsort(perm)]
    return pack(q.t(), bits, dim=0)


def _native_kernel(m: QuantLayout, dtype: torch.dtype, portable: bool = False) -> Kernel:
    lib = native.load(portable)
    arrays = native_arrays(m)
    w, s, o, bias, perm = (arrays[name] for name in ("w", "s", "o", "bias", "perm"))
    group = m.in_features // m.groups  # contiguous equal groups (native_plan)
    assert w is not None and s is not None and o is not None
    layer = native.Layer(
        w=w.data_ptr(),
        s=s.data_ptr(),
        o=o.data_ptr(),
        bias=None if bias is None else bias.data_ptr(),
        perm=None if perm is None else perm.data_ptr(),
        n=m.out_features,
        k=m.in_features,
        group=group,
        bits=m.bits,
        o_f32=int(o.dtype == torch.float32),
    )
    ref = ctypes.byref(layer)
    code = _DTYPE_CODES[dtype]
    call, n, k, threads = lib.pf_qlinear, m.out_features, m.in_features, torch.get_num_threads

    def run(x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]; the per-token path: no reshapes, one allocation
        if x.dtype != dtype:
            x = x.to(dtype)
        if not x.is_contiguous():
            x = x.contiguous()
        rows = x.numel() // k
        y = torch.empty((*x.shape[:-1], n), dtype=dtype)
        if rows and call(ref, x.data_ptr(), code, rows, y.data_ptr(), code, threads()):
            raise MemoryError(f"native kernel: no scratch memory for {rows} rows of {k}")
        return y

    n_, k_, bits = m.out_features, m.in_features, m.bits  # no reference to m: no cycle
    return Kernel(
        run,
        (w, s, o, bias, perm),
        keep=layer,
        qweight=lambda: native_qweight(n_, k_, bits, w, perm),
    )


def make_kernel(
    m: QuantLayout, device: torch.device, dtype: torch.dtype, backend: str
) -> tuple[str, Kernel]:
    """(backend, function computing ``m``'s forward for inputs on ``device`` in ``dtype``)."""
    fast_cpu = device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
    if backend == "auto":
        if device.type == "cuda" and m.bits in (2, 4, 8) and _triton_ok():
            backend = "triton"
        elif fast_cpu and native_plan(m) is not None and native.available():
            backend = "native"
        elif fast_cpu and int4_plan(m) is not None:
            backend = "torch_int4"
        elif fast_cpu and int8_ok(m):
            backend = "torch_int8"
        else:
            backend = "dequant"
    if backend in ("native", "native_portable"):
        if device.type != "cpu" or dtype not in _DTYPE_CODES or native_plan(m) is None:
            raise ValueError(f"{backend} cannot run {m.extra_repr()} on {device} {dtype}")
        portable = backend == "native_portable"
        reason = None if portable else native.unavailable_reason()
        if reason is not None:
            raise ValueError(f"the native kernel cannot run here: {reason}")
        return backend, _native_kernel(m, dtype, portable)
    if backend == "torch_int4":
        if not fast_cpu or int4_plan(m) is None:
            raise ValueError(f"torch_int4 cannot run {m.extra_repr()} on {device} {dtype}")
        return backend, _int4_kernel(m, dtype)
    if backend == "torch_int8":
        if not fast_cpu or not int8_ok(m):
            raise ValueError(f"torch_int8 cannot run {m.extra_repr()} on {device} {dtype}")
        return backend, _int8_kernel(m, dtype)
    if backend == "triton":
        from plugformer.core.quant.triton_matmul import triton_kernel

        return backend, Kernel(triton_kernel(m, dtype))  # (held: on the GPU, not counted)
    bias = None if m.bias is None else m.bias.to(dtype)
    if backend == "reference":  # dequantize on every call: no float copy kept
        return backend, Kernel(lambda x: F.linear(x, m.dequantize(dtype), bias), (bias,))
    weight = m.dequantize(dtype)
    return "dequant", Kernel(lambda x: F.linear(x, weight, bias), (weight, bias))


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
