"""Weight-only quantized linear layers stored in the GPTQ layout, with fast kernels.

A :class:`QuantLinear` holds exactly the tensors of a GPTQ checkpoint (AutoGPTQ, GPTQModel,
transformers and vLLM read and write them) for one ``nn.Linear(in_features, out_features)``:

* ``qweight`` int32 [in * bits / 32, out]: the integer weights, packed along the input features
  (:mod:`plugformer.core.quant.pack`);
* ``qzeros`` int32 [groups, out * bits / 32]: the integer zero points, packed along the output
  features. GPTQ v1 (``checkpoint_format: gptq``) stores ``zero - 1`` (a zero point of 0
  borrowing from its neighbour, as GPTQModel writes it: see
  :func:`~plugformer.core.quant.pack.gptq_v1_zero_points`); v2 stores ``zero``;
* ``scales`` float16 [groups, out];
* ``g_idx`` int32 [in]: the group of each input feature (``i // group_size``, or a permutation of
  it with act-order, ``desc_act``);
* ``bias`` [out] (optional).

Weight ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``. GGUF Q4_1 blocks have a
minimum that is not an integer zero point; for them ``offsets`` float16 [groups, out] replaces
``qzeros`` and ``W[o, i] = scales[g, o] * q[i, o] + offsets[g, o]`` (ggml's arithmetic).

Kernels (:mod:`plugformer.core.quant.kernels`), chosen per input device and dtype
(``backend="auto"``). Measured with ``benchmarks/quant_quality.py`` on the 2-vCPU AVX-512 machine,
one [1536 x 576] layer, 2 threads, microseconds for 1 / 128 tokens (fp32 F.linear: 48 / 1053,
bf16 F.linear: 40 / 251; the 3.5 MB fp32 weight sits in cache here, so whole-model decode gains
more, being bound by memory bandwidth):

* CPU, bfloat16/float16 activations, 4 bits, groups of 32/64/128/256 (or per-channel over an
  input size that is a multiple of 32), ``out % 16 == 0``: ``torch._weight_int4pack_mm_for_cpu``
  (16 / 629);
* CPU, bfloat16/float16, 8 bits, one group per channel, ``in % 16 == 0``:
  ``torch._weight_int8pack_mm`` plus a rank-1 zero-point correction (15 / 711);
* CUDA with Triton: the dequant-matmul kernel of :mod:`plugformer.core.quant.triton_matmul`;
* everything else, float32 activations included: the weight dequantized once into a cached
  ``F.linear`` weight of the activation dtype (49 / 1069). The packed CPU ops accept float32
  activations too, but ran 40x (1 token) to 180x (128 tokens) slower than with bfloat16 in a
  one-thread measurement, slower than dequantizing; so float32 models compute exactly the
  dequantized reference, at float memory cost. ``reference`` dequantizes on every call
  (1035 / 2101) and keeps no float copy.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.quant import LAYER_CAPABILITIES, QuantizedWeights
from plugformer.core.memory import release_free_memory
from plugformer.core.native import build as native
from plugformer.core.quant.kernels import Kernel, make_kernel
from plugformer.core.quant.layout import ZERO_FORMATS, group_count, layout_problems
from plugformer.core.quant.pack import gptq_v1_zero_points, pack, unpack

BACKENDS = (
    "auto", "dequant", "reference", "native", "native_portable", "torch_int4", "torch_int8",
    "triton",
)  # fmt: skip


def linear_kernel_problems(name: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` when ``linear_kernel=name`` cannot run on ``device``."""
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"linear_kernel: {name!r} is not one of {', '.join(BACKENDS)}{hint}")
    if name == "native":
        reason = native.unavailable_reason() if device.type == "cpu" else f"on {device}"
        if reason is not None:
            raise ConfigError(f"linear_kernel=native cannot run: {reason}")


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
        # computed on the CPU: integer division of a meta tensor imports torch._dynamo
        g_idx = torch.arange(in_features, dtype=torch.int32, device="cpu") // gs
        self.register_buffer("g_idx", g_idx.to(self.qweight.device))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernels: dict[tuple[torch.device, torch.dtype], Kernel] = {}
        self._kernel_names: dict[tuple[torch.device, torch.dtype], str] = {}
        # weights copied into the buffers in place (load_state_dict): kernels are rebuilt
        self.register_load_state_dict_post_hook(lambda module, _: module._reset_kernels())

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

    @classmethod
    def from_weights(cls, w: QuantizedWeights) -> QuantLinear:
        """The layer holding a :class:`~plugformer.core.interfaces.quant.QuantizedWeights`
        (what a third-party quantized layer's ``quantized_weights()`` returns)."""
        g = w.g_idx
        desc_act = g is not None and g.numel() > 1 and bool((g[1:] < g[:-1]).any())
        return cls.from_ints(
            w.q, w.scales, w.zeros, g, w.bits, w.group_size, w.bias,
            sym=w.sym, desc_act=desc_act, zero_format=w.zero_format,
        )  # fmt: skip

    # -- the reference ---------------------------------------------------------------------
    def int_weight(self) -> torch.Tensor:
        """The integer weights q [in, out] (int32, unsigned)."""
        return unpack(self.qweight, self.bits, dim=0)

    def zero_points(self) -> torch.Tensor:
        """Integer zero points [groups, out] (int32); GPTQ v1's stored ``zero - 1`` undone the
        way GPTQModel does (:func:`~plugformer.core.quant.pack.gptq_v1_zero_points`)."""
        if self.zero_format == "float":
            raise ValueError("this layer has float offsets, not integer zero points")
        if self.zero_format == "gptq":
            return gptq_v1_zero_points(self.qzeros, self.bits)
        return unpack(self.qzeros, self.bits, dim=1)

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
        first use from the buffers and kept until they change or move.

        A kernel that can rebuild ``qweight`` from its own layout (the native one) becomes the
        only copy of the integer weights: ``qweight`` leaves the buffers and comes back,
        rebuilt bit for bit, when anything reads it (``layer.qweight``, ``state_dict``, a
        move, a new backend). Set ``keep_one_copy = False`` to keep both."""
        key = (device, dtype)
        if key not in self._kernels:
            with torch.inference_mode(False), torch.no_grad():
                name, fn = make_kernel(self, device, dtype, self.backend)
            self._kernels[key] = fn
            self._kernel_names[key] = name
            if fn.qweight is not None and self.keep_one_copy:
                self._buffers.pop("qweight", None)
                self.__dict__["_qweight_from"] = fn.qweight
            release_free_memory()  # unpacking's temporaries: the heap would keep them
        return self._kernel_names[key], self._kernels[key]

    keep_one_copy = True

    def _materialize(self) -> None:
        """Put ``qweight`` back into the buffers if a kernel holds the only copy."""
        rebuild = self.__dict__.pop("_qweight_from", None)
        if rebuild is not None:
            with torch.inference_mode(False), torch.no_grad():
                self._buffers["qweight"] = rebuild()

    def _reset_kernels(self) -> None:
        self._materialize()
        self.__dict__["_kernels"], self.__dict__["_kernel_names"] = {}, {}

    def __getattr__(self, name: str) -> Any:
        if name == "qweight" and "_qweight_from" in self.__dict__:
            self._materialize()
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        rebuild = self.__dict__.get("_qweight_from")
        self._materialize()
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if rebuild is not None:  # saved; the kernel keeps the only copy again
            self._buffers.pop("qweight", None)
            self.__dict__["_qweight_from"] = rebuild

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._materialize()
        super()._load_from_state_dict(*args, **kwargs)

    def kernel_tensors(self) -> list[torch.Tensor]:
        """The tensors the built kernels keep besides the buffers (their weight copies)."""
        return [t for kernel in self._kernels.values() for t in kernel.held]

    def set_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._reset_kernels()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in (*self.keep_dtype, "bias") and "_kernels" in self.__dict__:
            if name == "qweight" and self.__dict__.pop("_qweight_from", None) is not None:
                self._buffers["qweight"] = value  # replaced: nothing to rebuild
            self._reset_kernels()  # new weights: kernels are rebuilt on next use
        super().__setattr__(name, value)

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        self._reset_kernels()  # moved or cast: rebuilt from the buffers
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, sym={self.sym}, desc_act={self.desc_act}, "
            f"zero_format={self.zero_format}, bias={self.bias is not None}"
        )


def build_kernels(model: nn.Module, dtype: torch.dtype) -> None:
    """Build the kernels of ``model``'s quantized layers for inputs in ``dtype`` now rather
    than on the first forward, largest layer first: while the largest one (an LM head) holds
    two copies of its integers, the others have not yet added their kernels' arrays, which
    keeps the high-water mark of loading lower. Layers on the meta device are skipped."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    layers.sort(key=lambda m: m.in_features * m.out_features * m.bits, reverse=True)
    for m in layers:
        if m.qweight.device.type != "meta":
            m.kernel_for(m.qweight.device, dtype)


def swap_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at ``path`` (``layers.0.attn.wq``) with ``new``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def adopt_quantized_layers(model: nn.Module) -> int:
    """Swap every module that declares ``quantized_weights()`` (a third-party quantizer's
    layer; :data:`~plugformer.core.interfaces.quant.LAYER_CAPABILITIES`) for the equal
    :class:`QuantLinear`, so it saves, cuts and runs on the core's kernels; returns how many.
    A layout the GPTQ layer cannot hold is a :class:`ConfigError` naming the layer."""
    count = 0
    for path, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            continue
        export = capability(module, LAYER_CAPABILITIES, "quantized_weights")
        if not callable(export):
            continue
        weights = export()
        if not isinstance(weights, QuantizedWeights):
            raise ConfigError(
                f"{path} ({type(module).__name__}).quantized_weights() returned "
                f"{type(weights).__name__}, not a QuantizedWeights"
            )
        out_features, in_features = weights.q.shape
        problems = layout_problems(in_features, out_features, weights.bits, weights.group_size)
        if problems:
            raise ConfigError(f"{path} ({type(module).__name__}): {'; '.join(problems)}")
        try:
            swap_module(model, path, QuantLinear.from_weights(weights))
        except ValueError as exc:
            raise ConfigError(f"{path} ({type(module).__name__}): {exc}") from None
        count += 1
    return count
