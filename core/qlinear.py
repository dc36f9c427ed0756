"""Weight-only quantized linear layers stored in the GPTQ layout, with fast kernels.

A :class:`QuantLinear` holds exactly the tensors of a GPTQ checkpoint (AutoGPTQ, GPTQModel,
transformers and vLLM read and write them) for one ``nn.Linear(in_features, out_features)``:

* ``qweight`` int32 [in * bits / 32, out]: the integer weights, packed along the input features
  (:mod:`plugformer.core.qpack`);
* ``qzeros`` int32 [groups, out * bits / 32]: the integer zero points, packed along the output
  features. GPTQ v1 (``checkpoint_format: gptq``) stores ``zero - 1``; v2 stores ``zero``;
* ``scales`` float16 [groups, out];
* ``g_idx`` int32 [in]: the group of each input feature (``i // group_size``, or a permutation of
  it with act-order, ``desc_act``);
* ``bias`` [out] (optional).

Weight ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``. GGUF Q4_1 blocks have a
minimum that is not an integer zero point; for them ``offsets`` float16 [groups, out] replaces
``qzeros`` and ``W[o, i] = scales[g, o] * q[i, o] + offsets[g, o]`` (ggml's arithmetic).

Kernels, chosen per input device and dtype (``backend="auto"``); measured on a 2-vCPU AVX-512
machine, a [1536 x 576] layer, one thread:

* CPU, bfloat16/float16 activations, 4 bits, groups of 32/64/128/256 (or per-channel over an
  input size that is a multiple of 32), ``out % 16 == 0``: ``torch._weight_int4pack_mm_for_cpu``
  (27-31 us per token vs 61 us for a bf16 ``F.linear``; 1.3 ms for 128 tokens);
* CPU, bfloat16/float16, 8 bits, one group per channel, ``in % 16 == 0``:
  ``torch._weight_int8pack_mm`` (25 us per token) plus a rank-1 zero-point correction;
* CUDA with Triton: the dequant-matmul kernels of :mod:`plugformer.core.qmatmul_triton`;
* everything else, float32 activations included: the weight dequantized once into a cached
  ``F.linear`` weight of the activation dtype. The packed CPU ops take float32 activations too,
  but ran 40x (per token) to 180x (128 tokens) slower than with bfloat16, slower than dequantizing;
  so float32 models compute exactly the dequantized reference, at float memory cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core.qpack import SUPPORTED_BITS, pack, run_length, unpack

BACKENDS = ("auto", "dequant", "reference", "torch_int4", "torch_int8", "triton")
ZERO_FORMATS = ("gptq", "gptq_v2", "float")
INT4_GROUPS = (256, 128, 64, 32)  # group sizes torch's int4 CPU op accepts


def layout_problems(in_features: int, out_features: int, bits: int, group_size: int) -> list[str]:
    """Why a linear of these sizes cannot be stored in the GPTQ layout (empty when it can)."""
    if bits not in SUPPORTED_BITS:
        return [f"bits={bits} is not supported (supported: 2, 3, 4, 8)"]
    problems = []
    if group_size != -1 and (group_size <= 0 or in_features % group_size):
        problems.append(
            f"group_size={group_size} does not divide in_features={in_features}"
            if group_size > 0
            else f"group_size={group_size} must be positive or -1"
        )
    run = run_length(bits)
    for what, n in (("in_features", in_features), ("out_features", out_features)):
        if n % run:
            problems.append(f"{what}={n} is not a multiple of {run} ({bits}-bit packing)")
    return problems


def group_count(in_features: int, group_size: int) -> int:
    return 1 if group_size == -1 else in_features // group_size


class QuantLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` stored as GPTQ integers (see the module docstring)."""

    #: tensors loaded in their own dtype, not cast to the model's (see core.loading)
    keep_dtype = ("qweight", "qzeros", "offsets", "scales", "g_idx")
    qweight: torch.Tensor
    qzeros: torch.Tensor
    offsets: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool = False,
        *,
        sym: bool = True,
        desc_act: bool = False,
        zero_format: str = "gptq",
    ) -> None:
        super().__init__()
        problems = layout_problems(in_features, out_features, bits, group_size)
        if problems or zero_format not in ZERO_FORMATS:
            raise ValueError("; ".join(problems) or f"zero_format={zero_format!r}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.sym, self.desc_act = bits, group_size, sym, desc_act
        self.zero_format = zero_format
        self.backend = "auto"
        groups = group_count(in_features, group_size)
        self.register_buffer(
            "qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32)
        )
        if zero_format == "float":
            self.register_buffer("offsets", torch.zeros(groups, out_features, dtype=torch.float16))
        else:
            shape = (groups, out_features * bits // 32)
            self.register_buffer("qzeros", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        gs = in_features if group_size == -1 else group_size
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32) // gs)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernels: dict[tuple[torch.device, torch.dtype], Callable[..., torch.Tensor]] = {}
        self._kernel_names: dict[tuple[torch.device, torch.dtype], str] = {}

    @property
    def groups(self) -> int:
        return int(self.scales.shape[0])

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_ints(
        cls,
        q: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        g_idx: torch.Tensor | None,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None = None,
        *,
        sym: bool = True,
        desc_act: bool = False,
        zero_format: str = "gptq",
    ) -> QuantLinear:
        """From integer weights ``q`` [out, in], ``scales`` [groups, out], integer ``zeros``
        [groups, out] (float offsets with ``zero_format="float"``) and ``g_idx`` [in]."""
        out_features, in_features = q.shape
        m = cls(
            in_features, out_features, bits, group_size, bias is not None,
            sym=sym, desc_act=desc_act, zero_format=zero_format,
        )  # fmt: skip
        m.qweight = pack(q.t(), bits, dim=0)
        if zero_format == "float":
            m.offsets = zeros.to(torch.float16).contiguous()
        else:
            stored = zeros.to(torch.int64) - (1 if zero_format == "gptq" else 0)
            if stored.min() < 0 or stored.max() >= 2**bits:
                raise ValueError(f"zero points out of range for {zero_format} {bits}-bit")
            m.qzeros = pack(stored, bits, dim=1)
        m.scales = scales.to(torch.float16).contiguous()
        if g_idx is not None:
            m.g_idx = g_idx.to(torch.int32).contiguous()
        if bias is not None:
            m.bias = bias.detach().clone()
        return m

    # -- the reference ---------------------------------------------------------------------
    def int_weight(self) -> torch.Tensor:
        """The integer weights q [in, out] (int32, unsigned)."""
        return unpack(self.qweight, self.bits, dim=0)

    def zero_points(self) -> torch.Tensor:
        """Integer zero points [groups, out] (int32); GPTQ v1's stored ``zero - 1`` undone."""
        if self.zero_format == "float":
            raise ValueError("this layer has float offsets, not integer zero points")
        return unpack(self.qzeros, self.bits, dim=1) + (1 if self.zero_format == "gptq" else 0)

    def scales_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, o)`` [groups, out] float32 with ``W = s * q + o`` (``o = -s * zero``)."""
        s = self.scales.float()
        if self.zero_format == "float":
            return s, self.offsets.float()
        return s, -s * self.zero_points().float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in]: computed in float32 like the GPTQ and ggml references."""
        q = self.int_weight().float()  # [in, out]
        g = self.g_idx.long()
        s = self.scales.float()[g]  # [in, out]
        if self.zero_format == "float":
            w = q * s + self.offsets.float()[g]
        else:
            w = s * (q - self.zero_points().float()[g])
        return w.t().contiguous().to(dtype)  # row-major like nn.Linear: the same GEMM

    def check_g_idx(self) -> list[str]:
        """Problems of ``g_idx`` (values outside [0, groups))."""
        g = self.g_idx
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= self.groups):
            bad = int(g[(g < 0) | (g >= self.groups)][0])
            return [f"g_idx holds {bad}, outside the {self.groups} groups [0, {self.groups})"]
        return []

    # -- execution -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        kernel = self._kernels.get((x.device, x.dtype))
        if kernel is None:
            kernel = self.kernel_for(x.device, x.dtype)[1]
        return kernel(x)

    def kernel_for(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """(backend name, forward function) for inputs on ``device`` in ``dtype``; built on
        first use from the buffers and kept until they change or move."""
        key = (device, dtype)
        if key not in self._kernels:
            with torch.inference_mode(False), torch.no_grad():
                name, fn = make_kernel(self, device, dtype, self.backend)
            self._kernels[key] = fn
            self._kernel_names[key] = name
        return self._kernel_names[key], self._kernels[key]

    def set_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._kernels, self._kernel_names = {}, {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in (*self.keep_dtype, "bias") and "_kernels" in self.__dict__:
            self.__dict__["_kernels"] = {}  # new weights: kernels are rebuilt on next use
            self.__dict__["_kernel_names"] = {}
        super().__setattr__(name, value)

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        self._kernels, self._kernel_names = {}, {}  # moved or cast: rebuilt from the buffers
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, sym={self.sym}, desc_act={self.desc_act}, "
            f"zero_format={self.zero_format}, bias={self.bias is not None}"
        )


# -- kernels -------------------------------------------------------------------------------
def _contiguous_groups(m: QuantLinear) -> tuple[torch.Tensor | None, int] | None:
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


def int4_plan(m: QuantLinear) -> tuple[torch.Tensor | None, int] | None:
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


def _with_bias(fn: Callable[[torch.Tensor], torch.Tensor], m: QuantLinear, dtype: torch.dtype):
    bias = None if m.bias is None else m.bias.to(dtype)
    out_features = m.out_features

    def run(x: torch.Tensor) -> torch.Tensor:
        y = fn(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], out_features)
        return y if bias is None else y + bias

    return run


def _int4_kernel(m: QuantLinear, dtype: torch.dtype):
    plan = int4_plan(m)
    assert plan is not None
    perm, gs = plan
    q = m.int_weight()  # [in, out]
    s, o = m.scales_offsets()  # [groups, out]
    if perm is not None:
        q = q[perm]
    if m.groups == 1:
        s, o = s.expand(m.in_features // gs, -1), o.expand(m.in_features // gs, -1)
    # torch's int4 op computes (q - 8) * scale + zero
    scale_zero = torch.stack([s, o + 8 * s], dim=-1).to(dtype).contiguous()  # [G, out, 2]
    packed = torch._convert_weight_to_int4pack_for_cpu(q.t().contiguous(), 2)

    def mm(x2: torch.Tensor) -> torch.Tensor:
        if perm is not None:
            x2 = x2.index_select(1, perm)
        return torch._weight_int4pack_mm_for_cpu(x2.contiguous(), packed, gs, scale_zero)

    return _with_bias(mm, m, dtype)


def int8_ok(m: QuantLinear) -> bool:
    return m.bits == 8 and m.groups == 1 and m.in_features % 16 == 0


def _int8_kernel(m: QuantLinear, dtype: torch.dtype):
    w8 = (m.int_weight().t() - 128).to(torch.int8).contiguous()  # [out, in]
    s, o = m.scales_offsets()
    scale = s[0].to(dtype)
    corr = o[0] + 128 * s[0]  # W = s * (q - 128) + corr
    correction = corr.to(dtype) if bool(corr.any()) else None

    def mm(x2: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x2.contiguous(), w8, scale)
        return y if correction is None else y + x2.sum(-1, keepdim=True) * correction

    return _with_bias(mm, m, dtype)


def make_kernel(
    m: QuantLinear, device: torch.device, dtype: torch.dtype, backend: str
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(backend, function computing ``m``'s forward for inputs on ``device`` in ``dtype``)."""
    fast_cpu = device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
    if backend == "auto":
        if device.type == "cuda" and m.bits in (2, 4, 8) and _triton_ok():
            backend = "triton"
        elif fast_cpu and int4_plan(m) is not None:
            backend = "torch_int4"
        elif fast_cpu and int8_ok(m):
            backend = "torch_int8"
        else:
            backend = "dequant"
    if backend == "torch_int4":
        if not fast_cpu or int4_plan(m) is None:
            raise ValueError(f"torch_int4 cannot run {m.extra_repr()} on {device} {dtype}")
        return backend, _int4_kernel(m, dtype)
    if backend == "torch_int8":
        if not fast_cpu or not int8_ok(m):
            raise ValueError(f"torch_int8 cannot run {m.extra_repr()} on {device} {dtype}")
        return backend, _int8_kernel(m, dtype)
    if backend == "triton":
        from plugformer.core.qmatmul_triton import triton_kernel

        return backend, triton_kernel(m, dtype)
    bias = None if m.bias is None else m.bias.to(dtype)
    if backend == "reference":  # dequantize on every call: no float copy kept
        return backend, lambda x: F.linear(x, m.dequantize(dtype), bias)
    weight = m.dequantize(dtype)
    return "dequant", lambda x: F.linear(x, weight, bias)


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def swap_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at ``path`` (``layers.0.attn.wq``) with ``new``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
