"""PEFT's adapter directory, both ways: ``adapter_config.json`` and
``adapter_model.safetensors`` with tensors named ``base_model.model.<HF module path>.<suffix>``.

Reading refuses, by name, every PEFT feature plugformer does not compute (``modules_to_save``,
per-layer rank patterns, bias training, ...) and every tensor of a module the model does not
have, instead of loading part of an adapter.

An adapter of another plugin than the built-in ``lora`` and ``dora`` is saved the same way,
with two more keys that PEFT does not know: ``plugformer_adapter`` (its registry name) and
``plugformer_config`` (its config fields); plugformer reads it back with that plugin.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plugformer.core.adapters.attach import Attached, adapters_of, attach
from plugformer.core.adapters.layer import AdaptedLinear
from plugformer.core.adapters.targets import select
from plugformer.core.errors import CheckpointError, ConfigError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."

#: the adapters whose directories are PEFT's own LoRA format
PEFT_NATIVE = ("lora", "dora")
#: PEFT LoraConfig keys that only describe (ignored when read)
INFORMATIVE = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
    "auto_mapping", "peft_version", "megatron_core", "qalora_group_size", "target_modules",
    "r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "init_lora_weights",
}  # fmt: skip
#: keys plugformer computes only at their neutral value: key -> the values allowed
NEUTRAL: dict[str, tuple[Any, ...]] = {"bias": ("none",), "fan_in_fan_out": (False,)}


def _is_neutral(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def read_config(directory: Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``, checked: a LoRA (or DoRA) adapter with no
    feature plugformer does not compute."""
    path = directory / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"adapter.path: {directory} has no {CONFIG}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"adapter.path: {path} is not readable JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"adapter.path: {path} is not a JSON object")
    if "plugformer_adapter" in cfg:  # a plugin's own adapter: its fields, read by it
        if not isinstance(cfg.get("plugformer_config", {}), dict):
            raise CheckpointError(f"adapter.path: {path}: plugformer_config is not an object")
        return cfg
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(
            f"adapter.path: {path}: peft_type {cfg.get('peft_type')!r} is not supported "
            "(LORA, with or without use_dora)"
        )
    refused = []
    for key, value in sorted(cfg.items()):
        if key in INFORMATIVE:
            continue
        allowed = NEUTRAL.get(key)
        if allowed is not None and value in allowed:
            continue
        if allowed is None and _is_neutral(value):
            continue
        refused.append(f"{key}={json.dumps(value)}")
    init = cfg.get("init_lora_weights", True)
    if init not in (True, False, "gaussian"):
        refused.append(f"init_lora_weights={json.dumps(init)} (changes the base weights)")
    if refused:
        raise CheckpointError(
            f"adapter.path: {path} uses PEFT features plugformer does not compute: "
            + ", ".join(refused)
        )
    return cfg


def adapter_config_of(registry: Any, cfg: dict[str, Any], path: Path) -> Any:
    """The plugin config (``adapter=lora`` or ``dora``) equal to a PEFT config, or the config
    of the plugin named by ``plugformer_adapter``."""
    targets = cfg.get("target_modules") or []
    if "plugformer_adapter" in cfg:
        own = registry.get("adapter", cfg["plugformer_adapter"]).config
        fields = dict(cfg.get("plugformer_config", {}))
        try:
            return own(**fields, path=str(path), target_modules=targets)
        except TypeError as exc:
            raise CheckpointError(f"adapter.path: {path / CONFIG}: {exc}") from None
    name = "dora" if cfg.get("use_dora") else "lora"
    init = cfg.get("init_lora_weights", True)
    fields = {
        "path": str(path), "target_modules": cfg.get("target_modules") or [],
        "r": cfg.get("r", 8), "alpha": float(cfg.get("lora_alpha", 8)),
        "dropout": float(cfg.get("lora_dropout", 0.0)), "rslora": bool(cfg.get("use_rslora")),
        "init": "gaussian" if init == "gaussian" else "default",
    }  # fmt: skip
    config_class = registry.get("adapter", name).config
    return config_class(**fields)


def load(
    model: nn.Module,
    registry: Any,
    spec: Any,
    directory: str | Path,
    hf_names: dict[str, str],
    name: str = "default",
) -> Attached:
    """Attach the PEFT adapter saved in ``directory`` to ``model`` under ``name``."""
    path = Path(directory).expanduser()
    cfg = read_config(path)
    config = adapter_config_of(registry, cfg, path)
    targets = config.target_modules
    try:
        select(model, targets, hf_names, "target_modules")
    except ConfigError as exc:
        raise CheckpointError(f"adapter.path: {path / CONFIG}: {exc}") from None
    try:
        tensors = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"adapter.path: {path} has no {WEIGHTS}") from None
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"adapter.path: {path / WEIGHTS} is not readable: {exc}") from None
    adapter = registry.build("adapter", config, spec)
    attached = attach(model, adapter, config, hf_names, name)
    expected = _expected(model, attached, name)
    extra = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if extra or missing:
        _detach(model, name)
        parts = []
        if extra:
            parts.append(f"tensors for modules this model does not have: {', '.join(extra[:4])}")
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:4])}")
        raise CheckpointError(f"adapter.path: {path / WEIGHTS}: " + "; ".join(parts))
    with torch.no_grad():
        for key, target in expected.items():
            got = tensors[key]
            if got.shape != target.shape:
                _detach(model, name)
                raise CheckpointError(
                    f"adapter.path: {key} has shape {tuple(got.shape)}, the model's layer "
                    f"needs {tuple(target.shape)}"
                )
            target.copy_(got)
    return attached


def _expected(model: nn.Module, attached: Attached, name: str) -> dict[str, torch.Tensor]:
    """PEFT tensor name -> the adapter's tensor in the model."""
    out = {}
    for path in attached.paths:
        layer = model.get_submodule(path)
        assert isinstance(layer, AdaptedLinear)
        hf = attached.hf_names.get(path, path)
        for key, tensor in layer.adapters[name].state_dict(keep_vars=True).items():
            out[f"{PREFIX}{hf}.{key}"] = tensor
    return out


def _detach(model: nn.Module, name: str) -> None:
    record = adapters_of(model)
    attached = record.by_name.pop(name, None)
    if attached is None:
        return
    for path in attached.paths:
        layer = model.get_submodule(path)
        if isinstance(layer, AdaptedLinear) and name in layer.adapters:
            del layer.adapters[name]
    record.routing.active = [n for n in record.routing.active if n != name]


def _saved_targets(model: nn.Module, attached: Attached) -> list[str]:
    """PEFT's ``target_modules``: the short names when they choose exactly these layers, else
    the full HF paths."""
    hf = [attached.hf_names.get(p, p) for p in attached.paths]
    short = sorted({h.rsplit(".", 1)[-1] for h in hf})
    try:
        if select(model, short, attached.hf_names, "target_modules") == attached.paths:
            return short
    except ConfigError:
        pass
    return sorted(hf)


def save(
    model: nn.Module, directory: str | Path, name: str = "default", base_model: str | None = None
) -> Path:
    """Write adapter ``name`` of ``model`` as a PEFT adapter directory (files written under a
    temporary name and renamed: an interrupted save leaves the previous files whole)."""
    record = adapters_of(model)
    if name not in record.by_name:
        raise ConfigError(f"adapter: the model has no adapter named {name!r}")
    attached = record.by_name[name]
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        key: t.detach().to("cpu", torch.float32).contiguous().clone()
        for key, t in _expected(model, attached, name).items()
    }
    own: dict[str, Any] = {}
    if attached.config.name not in PEFT_NATIVE:
        fields = dataclasses.asdict(attached.config)
        own = {
            "plugformer_adapter": attached.config.name,
            "plugformer_config": {
                k: v for k, v in fields.items() if k not in ("name", "path", "target_modules")
            },
        }
    config = {
        "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
        "target_modules": _saved_targets(model, attached), **attached.adapter.peft_config(),
        **own,
    }  # fmt: skip
    _write(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _write(out / CONFIG, lambda p: p.write_text(text))
    return out


def _write(target: Path, write: Any) -> None:
    tmp = target.with_name(target.name + ".partial")
    write(tmp)
    os.replace(tmp, target)
