"""From a model config to a checkpoint, a family, a spec and loaded weights.

Weights are never copied twice: the decoder is built on the meta device and the checkpoint's
(memory-mapped) tensors are assigned to it; every name, shape and dtype is checked against the
decoder before any tensor data is read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from plugformer.core.checkpoint import Checkpoint, CheckpointFormat
from plugformer.core.errors import CheckpointError, ConfigError
from plugformer.core.family import ModelFamily
from plugformer.core.registry import Registry


def _format_config(registry: Registry, name: str, options: dict[str, Any]) -> Any:
    entry = registry.get("checkpoint", name)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    return entry.config(**{k: v for k, v in options.items() if k in fields})


def open_checkpoint(
    registry: Registry, path: str, format_name: str | None = None, **options: Any
) -> Checkpoint:
    """Open ``path`` with the named checkpoint format, or the first format that detects it.
    ``options`` (e.g. ``allow_pickle``) go to the format's config where it has that field."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"model.path: {str(p)!r} does not exist")
    if format_name is not None:
        fmt: CheckpointFormat = registry.build(
            "checkpoint", _format_config(registry, format_name, options)
        )
        return fmt.open(p)
    for entry in registry.entries("checkpoint"):
        fmt = registry.build("checkpoint", _format_config(registry, entry.name, options))
        if fmt.detect(p):
            return fmt.open(p)
    names = registry.names("checkpoint")
    raise CheckpointError(
        f"model.path: no checkpoint format recognises {str(p)!r} "
        f"(registered formats: {', '.join(names) if names else 'none'})"
    )


def find_family(
    registry: Registry, hf_config: dict[str, Any], name: str | None = None
) -> ModelFamily:
    """The family named ``name``, or the one whose architectures / model types match."""
    if name is not None:
        entry = registry.get("family", name)
        family: ModelFamily = registry.build("family", entry.config())
        return family
    archs = hf_config.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    model_type = hf_config.get("model_type")
    families = [registry.build("family", e.config()) for e in registry.entries("family")]
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
        "choose one with model.family=<name>"
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
    """
    expected = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    tied: dict[str, str] = {}  # alias -> canonical, for parameters shared by two names
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        ident = id(tensor)
        if ident in seen:
            tied[name] = seen[ident]
        else:
            seen[ident] = name

    sources: dict[str, str] = {}  # our name -> checkpoint name
    unexpected: list[str] = []
    bad: list[str] = []
    for ck_name in checkpoint.tensor_names():
        ours = family.tensor_name(ck_name)
        if ours is None:
            continue
        if ours not in expected:
            unexpected.append(ck_name)
            continue
        if ours in sources:
            bad.append(f"{ck_name} and {sources[ours]} both map to {ours}")
            continue
        shape, ck_dtype = checkpoint.tensor_info(ck_name)
        if tuple(shape) != expected[ours][0]:
            bad.append(
                f"{ck_name} has shape {list(shape)}, the config needs {list(expected[ours][0])}"
            )
        elif not (ck_dtype.is_floating_point or ck_dtype == torch.uint8):
            bad.append(f"{ck_name} has dtype {ck_dtype}, expected a floating-point tensor")
        sources[ours] = ck_name
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

    state: dict[str, torch.Tensor] = {}
    for ours, ck_name in sources.items():
        state[ours] = checkpoint.tensor(ck_name).to(dtype)
    for alias, canonical in tied.items():
        state[alias] = state[canonical]
    model.load_state_dict(state, strict=True, assign=True)
    retie(model, tied)


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
    name = getattr(spec, kind)
    args = dict(getattr(spec, f"{kind}_args") or {})
    entry = registry.get(kind, name)
    fields = {f.name for f in dataclasses.fields(entry.config)} - {"name"}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ConfigError(
            f"model.spec.{kind}_args: {kind} {name!r} has no field(s) {', '.join(unknown)} "
            f"(fields: {', '.join(sorted(fields)) or 'none'})"
        )
    return entry.config(**args)
