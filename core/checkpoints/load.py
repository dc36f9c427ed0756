"""From a model config to a checkpoint, a family, a spec and loaded weights.

Weights are never copied twice: the decoder is built on the meta device and the checkpoint's
(memory-mapped) tensors are assigned to it; every name, shape and dtype is checked against the
decoder before any tensor data is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from plugformer.core import memory
from plugformer.core.errors import CheckpointError, ConfigError
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.checkpoint import CAPABILITIES as CHECKPOINT_CAPABILITIES
from plugformer.core.interfaces.checkpoint import Checkpoint, CheckpointFormat
from plugformer.core.interfaces.family import CAPABILITIES as FAMILY_CAPABILITIES
from plugformer.core.interfaces.family import ModelFamily, map_tensor_name
from plugformer.core.interfaces.quant import LAYER_CAPABILITIES
from plugformer.core.model.build import component_config
from plugformer.core.registry import Registry

Take = Callable[[torch.Tensor], torch.Tensor]  # a checkpoint tensor -> one of ours


def _format_config(registry: Registry, selected: Any, options: dict[str, Any]) -> Any:
    """The format's config: ``selected`` (a config, or a registry name for its defaults) with
    the model-level ``options`` that are switched on and that the format has a field for
    (``model.allow_pickle=true`` is ``checkpoint.allow_pickle=true``)."""
    if isinstance(selected, str):
        selected = registry.get("checkpoint", selected).config()
    fields = {f.name for f in dataclasses.fields(selected)}
    return dataclasses.replace(selected, **{k: v for k, v in options.items() if k in fields and v})


def open_checkpoint(
    registry: Registry, path: str, selected: Any = None, **options: Any
) -> Checkpoint:
    """Open ``path`` with the ``selected`` checkpoint format (its config, or a registry name),
    or by detection: every format's ``detect(path)`` confidence, the highest wins (a format
    that recognises its own layout, 1.0, over the generic ``hf`` directory, 0.5); two formats
    claiming the path equally are refused, naming both. ``options`` (``allow_pickle``) go to
    the format's config where it has that field."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"model.path: {str(p)!r} does not exist")
    if selected is not None:
        fmt: CheckpointFormat = registry.build(
            "checkpoint", _format_config(registry, selected, options)
        )
        return fmt.open(p)
    claims: list[tuple[float, str, CheckpointFormat]] = []
    refused: list[str] = []  # formats that cannot run here: they claim nothing
    for entry in registry.entries("checkpoint"):
        fmt = entry.builder(_format_config(registry, entry.name, options))
        reasons = list(fmt.check())
        if reasons:
            refused.append(f"{entry.name} ({'; '.join(reasons)})")
            continue
        confidence = float(fmt.detect(p))  # True counts as 1.0 (contract 1.x formats)
        if confidence > 0:
            claims.append((confidence, entry.name, fmt))
    if not claims:
        names = registry.names("checkpoint")
        why = f"; refused here: {', '.join(refused)}" if refused else ""
        raise CheckpointError(
            f"model.path: no checkpoint format recognises {str(p)!r} "
            f"(registered formats: {', '.join(names) if names else 'none'}{why})"
        )
    best = max(c for c, _, _ in claims)
    top = [(name, fmt) for c, name, fmt in claims if c == best]
    if len(top) > 1:
        raise CheckpointError(
            f"model.path: {str(p)!r} is claimed equally by the checkpoint formats "
            f"{' and '.join(repr(n) for n, _ in top)}; choose one with checkpoint=<name>"
        )
    return top[0][1].open(p)


def find_family(registry: Registry, hf_config: dict[str, Any], selected: Any = None) -> ModelFamily:
    """The ``selected`` family (its config, or a registry name), or the one whose
    architectures / model types match the checkpoint's config."""
    if selected is not None:
        if isinstance(selected, str):
            selected = registry.get("family", selected).config()
        family: ModelFamily = registry.build("family", selected)
        return family
    archs = hf_config.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    model_type = hf_config.get("model_type")
    families = []  # a family that refuses to run here (a missing package) matches nothing
    for entry in registry.entries("family"):
        candidate = entry.builder(entry.config())
        if not list(candidate.check()):
            families.append(candidate)
    for fam in families:
        if any(a in fam.architectures for a in archs):
            return fam
    for fam in families:
        if model_type in fam.model_types:
            return fam
    known = sorted({a for f in families for a in f.architectures})
    raise ConfigError(
        f"config.json: unknown architecture {archs!r} (model_type {model_type!r}); "
        f"registered families read: {', '.join(known) if known else 'none'}; "
        "choose one with family=<name>"
    )


def load_weights(
    model: torch.nn.Module,
    checkpoint: Checkpoint,
    family: ModelFamily,
    dtype: torch.dtype,
) -> None:
    """Assign the checkpoint's tensors to ``model`` (built on the meta device).

    Missing, unexpected and mis-shaped tensors are all reported at once, before any data is
    read. Tied parameters (the head sharing the embedding) need only one of their tensors.
    A family with ``tensor_parts`` may cut one checkpoint tensor into several of ours (fused
    projections) or re-lay it out (transposed weights); see
    :mod:`plugformer.core.interfaces.family`.
    """
    expected = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    # tensors a module keeps in the dtype it declares (its ``keep_dtype`` names: a quantized
    # layer's packed integers and float16 scales) instead of the model dtype
    exact = {
        f"{path}.{n}" if path else n
        for path, module in model.named_modules()
        for n in capability(module, LAYER_CAPABILITIES, "keep_dtype")
    }
    tied: dict[str, str] = {}  # alias -> canonical, for parameters shared by two names
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        ident = id(tensor)
        if ident in seen:
            tied[name] = seen[ident]
        else:
            seen[ident] = name
    split = capability(family, FAMILY_CAPABILITIES, "tensor_parts")
    spec = model.spec

    sources: dict[str, tuple[str, Take | None]] = {}  # our name -> (checkpoint name, take)
    unexpected: list[str] = []
    bad: list[str] = []
    for ck_name in checkpoint.tensor_names():
        parts = split(ck_name, spec) if split is not None else None
        shape, ck_dtype = checkpoint.tensor_info(ck_name)
        if parts is None:
            ours = map_tensor_name(family, ck_name, spec, checkpoint.hf_config)
            if ours is None:
                continue
            parts = [(ours, None)]
        for ours, take in parts:
            if ours not in expected:
                unexpected.append(ck_name if take is None else f"{ck_name} (as {ours})")
                continue
            if ours in sources:
                bad.append(f"{ck_name} and {sources[ours][0]} both map to {ours}")
                continue
            got = _part_shape(shape, take)
            if isinstance(got, str):  # the cut itself failed: said once per checkpoint tensor
                bad.append(f"{ck_name} has shape {list(shape)}, which {got}")
                break
            if got != expected[ours][0]:
                have = (
                    list(shape) if take is None else f"{list(shape)} (its part {ours}: {list(got)})"
                )
                bad.append(
                    f"{ck_name} has shape {have}, the config needs {list(expected[ours][0])}"
                )
            elif ours in exact and not expected[ours][1].is_floating_point:
                if ck_dtype != expected[ours][1]:
                    bad.append(f"{ck_name} has dtype {ck_dtype}, expected {expected[ours][1]}")
            elif not (ck_dtype.is_floating_point or ck_dtype == torch.uint8):
                bad.append(f"{ck_name} has dtype {ck_dtype}, expected a floating-point tensor")
            sources[ours] = (ck_name, take)
    for alias, canonical in tied.items():
        if alias in sources and canonical not in sources:
            sources[canonical] = sources.pop(alias)
        elif alias in sources:
            sources.pop(alias)  # tied: the canonical tensor wins
    missing = [n for n in expected if n not in sources and n not in tied]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected))}")
    problems += bad
    if problems:
        raise CheckpointError("checkpoint disagrees with its config: " + "; ".join(problems))

    memory.mark("baseline_rss_mb")  # everything but the weights: the interpreter, torch, ...
    state = _read_tensors(
        checkpoint,
        sources,
        {n: exact_dtype for n, (_, exact_dtype) in expected.items() if n in exact},
        dtype,
    )
    for alias, canonical in tied.items():
        state[alias] = state[canonical]
    model.load_state_dict(state, strict=True, assign=True)
    retie(model, tied)
    del state
    _drop_pages(checkpoint)
    memory.release_free_memory()  # the conversions' freed temporaries


def _read_tensors(
    checkpoint: Checkpoint,
    sources: dict[str, tuple[str, Take | None]],
    exact: dict[str, torch.dtype],
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Our name -> our tensor, each converted on its own so that at most one tensor's
    temporaries are alive at a time (``exact``: names kept in their own dtype)."""
    state: dict[str, torch.Tensor] = {}
    read: dict[str, torch.Tensor] = {}  # checkpoint tensors cut into several parts: read once
    for ours, (ck_name, take) in sources.items():
        if take is None:
            want = exact.get(ours, dtype)
            state[ours] = _read(checkpoint, ck_name, want)
        else:
            if ck_name not in read:
                read[ck_name] = checkpoint.tensor(ck_name)
            # one copy: cast and made contiguous together (a view of the map when neither)
            state[ours] = take(read[ck_name]).to(dtype, memory_format=torch.contiguous_format)
        _drop_pages(checkpoint)  # what was copied out of a map need not stay resident
        memory.release_free_memory()  # this tensor's temporaries, before the next one's
    return state


def _read(checkpoint: Checkpoint, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Checkpoint tensor ``name`` in ``dtype``; read straight into it when the format can (a
    GGUF quantized tensor is dequantized into ``dtype`` without a float32 copy)."""
    reader = capability(checkpoint, CHECKPOINT_CAPABILITIES, "tensor_as")
    t: torch.Tensor = reader(name, dtype) if reader is not None else checkpoint.tensor(name)
    return t.to(dtype)


def _drop_pages(checkpoint: Checkpoint) -> None:
    """Let a memory-mapped checkpoint drop its resident pages (formats that can)."""
    drop = capability(checkpoint, CHECKPOINT_CAPABILITIES, "drop_pages")
    if drop is not None:
        drop()


def _part_shape(shape: tuple[int, ...], take: Take | None) -> tuple[int, ...] | str:
    """The shape ``take`` makes of a checkpoint tensor of ``shape`` (on the meta device: no
    data), or why it cannot."""
    if take is None:
        return tuple(shape)
    try:
        return tuple(take(torch.empty(tuple(shape), device="meta")).shape)
    except (RuntimeError, IndexError, ValueError) as exc:
        return f"cannot be cut as the config says ({str(exc).splitlines()[0]})"


def retie(model: torch.nn.Module, tied: dict[str, str]) -> None:
    """After ``assign=True`` loading, make aliases the same Parameter object again."""
    for alias, canonical in tied.items():
        owner_path, _, attr = alias.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        src_path, _, src_attr = canonical.rpartition(".")
        src = model.get_submodule(src_path) if src_path else model
        setattr(owner, attr, getattr(src, src_attr))


def resolve_component(registry: Registry, kind: str, selected: Any, spec: Any) -> Any:
    """The config for ``kind``: the selected one, or for ``auto`` the model's own from its
    spec (``spec.<kind>`` names the entry, ``spec.<kind>_args`` sets its fields)."""
    if selected.name != "auto":
        return selected
    return component_config(
        registry, kind, getattr(spec, kind), getattr(spec, f"{kind}_args"), "model.spec"
    )
