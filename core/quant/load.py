"""Quantized checkpoints, loaded as quantized layers before any weights are read.

* **GPTQ directories** (``quantization_config`` with ``quant_method: gptq`` in ``config.json``,
  as transformers, GPTQModel, AutoGPTQ and vLLM write them): every ``<layer>.qweight`` in the
  checkpoint turns that linear layer into a :class:`~plugformer.core.quant.linear.QuantLinear`, its
  ``qweight``/``qzeros``/``scales``/``g_idx`` loaded as they are. Everything the loader can check
  without the weights is checked first: the method, bits, group size, format, each layer's tensor
  shapes and dtypes against the bits, and the ``g_idx`` values (a few KB).
* **GGUF** Q8_0/Q4_0/Q4_1 matrices (when the checkpoint offers ``quantized_type`` and
  ``quantized_blocks``, as the gguf plugin does): ggml's blocks of 32 become group-wise integers
  with group size 32, in the same layout: Q8_0 ``d * q`` is 8-bit with zero point 128, Q4_0
  ``d * (q - 8)`` is 4-bit with zero point 8, Q4_1 ``d * q + m`` is 4-bit with float offsets.

Checkpoint quantization is kept when the selected quantizer says so (its
``keeps_checkpoint_quantization``, true for ``quant=none``); another quantizer needs floats, so
GGUF weights are then dequantized and a GPTQ checkpoint is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plugformer.core.errors import CheckpointError, ConfigError
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.checkpoint import CAPABILITIES as CHECKPOINT_CAPABILITIES
from plugformer.core.interfaces.family import map_tensor_name
from plugformer.core.interfaces.quant import CAPABILITIES as QUANTIZER_CAPABILITIES
from plugformer.core.quant.linear import QuantLinear, group_count, layout_problems, swap_module
from plugformer.core.quant.pack import SUPPORTED_BITS, pack

FORMATS = ("gptq", "gptq_v2")  # v1 stores zero - 1, v2 the zero point itself
WHERE = "config.json: quantization_config"


@dataclass(frozen=True)
class GPTQSettings:
    """The ``quantization_config`` of a GPTQ checkpoint."""

    bits: int
    group_size: int
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"


def parse_quantization_config(qc: Any) -> GPTQSettings:
    """Validate a ``quantization_config``; every problem is a one-line CheckpointError."""
    if not isinstance(qc, dict):
        raise CheckpointError(f"{WHERE}: expected an object, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if not isinstance(method, str) or method.lower() != "gptq":
        raise CheckpointError(
            f"{WHERE}: quant_method {method!r} is not supported (supported: gptq)"
        )

    def get(key: str, kind: type, default: Any = ...) -> Any:
        value = qc.get(key, default)
        if value is ...:
            raise CheckpointError(f"{WHERE}: {key} is missing")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{WHERE}: {key} must be {kind.__name__}, got {value!r}")
        return value

    bits = get("bits", int)
    if bits not in SUPPORTED_BITS:
        raise CheckpointError(f"{WHERE}: bits={bits} is not supported (supported: 2, 3, 4, 8)")
    group_size = get("group_size", int, -1)
    if group_size != -1 and group_size <= 0:
        raise CheckpointError(f"{WHERE}: group_size={group_size} must be positive or -1")
    fmt = str(qc.get("format") or qc.get("checkpoint_format") or "gptq").lower()
    if fmt not in FORMATS:
        raise CheckpointError(
            f"{WHERE}: checkpoint_format {fmt!r} is not supported (supported: gptq, gptq_v2)"
        )
    pack_dtype = qc.get("pack_dtype", "int32")
    if pack_dtype not in ("int32", "torch.int32"):
        raise CheckpointError(f"{WHERE}: pack_dtype {pack_dtype!r} is not supported (int32)")
    if qc.get("dynamic"):
        raise CheckpointError(f"{WHERE}: per-module overrides ('dynamic') are not supported")
    return GPTQSettings(bits, group_size, get("desc_act", bool, False), get("sym", bool, True), fmt)


class CheckpointView:
    """A checkpoint with some tensors hidden and others added, computed on demand."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.hf_config: dict[str, Any] = base.hf_config
        self.generation_config: dict[str, Any] = base.generation_config
        self.hidden: set[str] = set()
        self.extra: dict[str, tuple[tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]] = {}

    def tensor_names(self) -> Iterator[str]:
        yield from (n for n in self.base.tensor_names() if n not in self.hidden)
        yield from self.extra

    def tensor_info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        if name in self.extra:
            return self.extra[name][:2]
        info: tuple[tuple[int, ...], torch.dtype] = self.base.tensor_info(name)
        return info

    def tensor(self, name: str) -> torch.Tensor:
        if name in self.extra:
            return self.extra[name][2]()
        t: torch.Tensor = self.base.tensor(name)
        return t

    def tensor_as(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """``tensor(name)`` read the base's cheaper way into ``dtype`` when it has one."""
        reader = capability(self.base, CHECKPOINT_CAPABILITIES, "tensor_as")
        if name in self.extra or reader is None:
            return self.tensor(name)
        t: torch.Tensor = reader(name, dtype)
        return t

    def tokenizer(self) -> Any:
        return self.base.tokenizer()

    def drop_pages(self) -> None:
        drop = capability(self.base, CHECKPOINT_CAPABILITIES, "drop_pages")
        if drop is not None:
            drop()

    def close(self) -> None:
        self.base.close()


def _linear_for(
    model: nn.Module, family: Any, hf_weight: str, hf_config: dict[str, Any]
) -> tuple[str, nn.Linear] | None:
    ours = map_tensor_name(family, hf_weight, model.spec, hf_config)
    if not isinstance(ours, str) or not ours.endswith(".weight"):
        return None
    path = ours[: -len(".weight")]
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return (path, module) if isinstance(module, nn.Linear) else None


def _sequential_groups(k: int, group_size: int) -> torch.Tensor:
    return torch.arange(k, dtype=torch.int32) // group_size


def _new_qlinear(linear: nn.Linear, *args: Any, **kwargs: Any) -> QuantLinear:
    with torch.device(linear.weight.device):
        return QuantLinear(linear.in_features, linear.out_features, *args, **kwargs)


def prepare_quantized(
    model: nn.Module,
    checkpoint: Any,
    family: Any,
    quantizer: Any,
    name: str,
    dense_ggml: bool = False,
) -> Any:
    """Swap ``model``'s linear layers (built on the meta device) for the quantized layers the
    checkpoint stores, and return the checkpoint to load the weights from. ``dense_ggml``:
    GGUF Q4/Q8 blocks load as dense layers instead (dequantized while loading). ``name`` is
    the quantizer's registry name, for messages."""
    keep = bool(capability(quantizer, QUANTIZER_CAPABILITIES, "keeps_checkpoint_quantization"))
    qc = checkpoint.hf_config.get("quantization_config")
    if qc is not None:
        settings = parse_quantization_config(qc)
        if not keep:
            raise ConfigError(
                f"quant={name}: the checkpoint is already quantized (GPTQ {settings.bits}-bit); "
                "it runs as it is with quant=none"
                + (" (quant.dequantize applies to GGUF files only)" if name == "none" else "")
            )
        return _prepare_gptq(model, checkpoint, family, settings)
    if (
        keep
        and not dense_ggml
        and callable(capability(checkpoint, CHECKPOINT_CAPABILITIES, "quantized_type"))
    ):
        return _prepare_ggml(model, checkpoint, family)
    return checkpoint


def _prepare_gptq(model: nn.Module, checkpoint: Any, family: Any, s: GPTQSettings) -> Any:
    names = set(checkpoint.tensor_names())
    view = CheckpointView(checkpoint)
    problems: list[str] = []
    layers: list[tuple[str, QuantLinear, str]] = []
    for name in sorted(n for n in names if n.endswith(".qweight")):
        prefix = name[: -len("qweight")]
        found = _linear_for(model, family, prefix + "weight", checkpoint.hf_config)
        if found is None:
            problems.append(f"{name}: the model has no linear layer for {prefix}weight")
            continue
        path, linear = found
        k, n = linear.in_features, linear.out_features
        bad = layout_problems(k, n, s.bits, s.group_size)
        if bad:
            problems.append(f"layer {prefix[:-1]} ({k} -> {n}): " + "; ".join(bad))
            continue
        g = group_count(k, s.group_size)
        want = {
            "qweight": ((k * s.bits // 32, n), (torch.int32,)),
            "qzeros": ((g, n * s.bits // 32), (torch.int32,)),
            "scales": ((g, n), (torch.float16, torch.bfloat16, torch.float32)),
            "g_idx": ((k,), (torch.int32,)),
        }
        for suffix, (shape, dtypes) in want.items():
            if prefix + suffix not in names:
                if suffix == "g_idx" and not s.desc_act:  # older files: the default order
                    gs = k if s.group_size == -1 else s.group_size
                    default = functools.partial(_sequential_groups, k, gs)
                    view.extra[prefix + suffix] = ((k,), torch.int32, default)
                else:
                    problems.append(f"{prefix}{suffix} is missing")
                continue
            got, dtype = checkpoint.tensor_info(prefix + suffix)
            if tuple(got) != shape:
                problems.append(
                    f"{prefix}{suffix} has shape {list(got)}; {s.bits}-bit GPTQ packing of "
                    f"{k} -> {n} features with group_size={s.group_size} needs {list(shape)}"
                )
            elif dtype not in dtypes:
                problems.append(f"{prefix}{suffix} has dtype {dtype}, expected {dtypes[0]}")
        new = _new_qlinear(
            linear, s.bits, s.group_size, linear.bias is not None,
            sym=s.sym, desc_act=s.desc_act, zero_format=s.checkpoint_format,
        )  # fmt: skip
        layers.append((path, new, prefix))
    if problems:
        raise CheckpointError("GPTQ checkpoint: " + "; ".join(problems))
    for path, new, prefix in layers:  # g_idx values: read them now (a few KB), before weights
        g_idx = view.tensor(prefix + "g_idx")
        groups = new.groups
        bad_values = g_idx[(g_idx < 0) | (g_idx >= groups)]
        if bad_values.numel():
            raise CheckpointError(
                f"GPTQ checkpoint: {prefix}g_idx holds {int(bad_values[0])}, outside the "
                f"{groups} groups [0, {groups}) of {new.in_features} input features"
            )
        swap_module(model, path, new)
    return view


# -- GGUF ----------------------------------------------------------------------------------
GGML_LAYOUTS = {"Q8_0": (8, 128), "Q4_0": (4, 8), "Q4_1": (4, None)}  # bits, zero (None: float)


def ggml_ints(kind: str, blocks: torch.Tensor) -> torch.Tensor:
    """Unsigned integers [rows, columns] of ggml blocks [rows, nblocks, block_bytes]."""
    rows = blocks.shape[0]
    if kind == "Q8_0":
        return (blocks[..., 2:].view(torch.int8).to(torch.int32) + 128).reshape(rows, -1)
    packed = blocks[..., -16:]  # low nibbles: weights 0..15 of the block, high: 16..31
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1).to(torch.int32).reshape(rows, -1)


class _GGMLLayer:
    """The GPTQ-layout tensors of one ggml matrix [n, k], computed from its blocks on demand."""

    def __init__(self, checkpoint: Any, name: str, kind: str, n: int, k: int) -> None:
        self.checkpoint, self.name, self.kind, self.n, self.k = checkpoint, name, kind, n, k
        self.bits, self.zero = GGML_LAYOUTS[kind]

    def _fp16(self, start: int) -> torch.Tensor:  # a float16 field of every block -> [g, n]
        blocks = self.checkpoint.quantized_blocks(self.name)[..., start : start + 2]
        return blocks.contiguous().view(torch.float16)[..., 0].t().contiguous()

    def qweight(self) -> torch.Tensor:
        q = ggml_ints(self.kind, self.checkpoint.quantized_blocks(self.name))  # [n, k]
        return pack(q.t(), self.bits, dim=0)

    def scales(self) -> torch.Tensor:
        return self._fp16(0)

    def offsets(self) -> torch.Tensor:  # Q4_1's minimum m
        return self._fp16(2)

    def qzeros(self) -> torch.Tensor:
        assert self.zero is not None
        stored = torch.full((self.k // 32, self.n), self.zero - 1, dtype=torch.int32)  # v1
        return pack(stored, self.bits, dim=1)

    def g_idx(self) -> torch.Tensor:
        return _sequential_groups(self.k, 32)


def _prepare_ggml(model: nn.Module, checkpoint: Any, family: Any) -> Any:
    view = CheckpointView(checkpoint)
    for name in list(checkpoint.tensor_names()):
        kind = checkpoint.quantized_type(name) if name.endswith(".weight") else None
        found = (
            _linear_for(model, family, name, checkpoint.hf_config) if kind in GGML_LAYOUTS else None
        )
        if kind is None or found is None:
            continue
        path, linear = found
        k, n = linear.in_features, linear.out_features
        bits, zero = GGML_LAYOUTS[kind]
        if layout_problems(k, n, bits, 32) or tuple(checkpoint.tensor_info(name)[0]) != (n, k):
            continue  # left to the float path, which reports a shape mismatch itself
        view.hidden.add(name)
        fmt = "float" if zero is None else "gptq"
        new = _new_qlinear(
            linear, bits, 32, linear.bias is not None, zero_format=fmt, sym=zero is not None
        )
        swap_module(model, path, new)
        layer = _GGMLLayer(checkpoint, name, kind, n, k)
        prefix, g = name[: -len("weight")], k // 32
        view.extra[prefix + "qweight"] = ((k * bits // 32, n), torch.int32, layer.qweight)
        view.extra[prefix + "scales"] = ((g, n), torch.float16, layer.scales)
        if zero is None:
            view.extra[prefix + "offsets"] = ((g, n), torch.float16, layer.offsets)
        else:
            view.extra[prefix + "qzeros"] = ((g, n * bits // 32), torch.int32, layer.qzeros)
        view.extra[prefix + "g_idx"] = ((k,), torch.int32, layer.g_idx)
    return view
