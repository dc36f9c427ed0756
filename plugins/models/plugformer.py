"""plugformer's own checkpoint layout: any generic-decoder spec, saved by
``plugformer.core.model.save.save_decoder`` (the format of this project, no paper).

``config.json`` is the :class:`ModelSpec` as JSON (plus ``model_type: plugformer``) and the
tensor names are the decoder's own, so every architecture plugformer can build -- a YAML-only
one included -- round-trips through safetensors unchanged.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.hf import decoder_tp_plan
from plugformer.core.model.save import ARCHITECTURE, MODEL_TYPE

# keys of a config.json that are not the spec: identity, versions, and the quantization of a
# GPTQ checkpoint (read by the loader from the same config)
_IGNORED = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "quantization_config",
}  # fmt: skip


@dataclass
class PlugformerFamilyConfig(FamilyConfig):
    name: str = "plugformer"


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a ModelSpec field's type hint."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


class Plugformer:
    """Checkpoints in plugformer's own layout."""

    architectures = (ARCHITECTURE,)
    model_types = (MODEL_TYPE,)

    def __init__(self, config: PlugformerFamilyConfig) -> None:
        self.config = config
        self.mlp = "gated"

    def check(self) -> list[str]:
        return []

    def spec_from_hf(self, hf_config: dict[str, Any]) -> ModelSpec:
        hints = typing.get_type_hints(ModelSpec)
        fields = {f.name for f in dataclasses.fields(ModelSpec)}
        values = {}
        for key, value in hf_config.items():
            if key in _IGNORED:
                continue
            if key not in fields:
                raise ConfigError(
                    f"config.json: {key} is not a plugformer ModelSpec field "
                    f"(fields: {', '.join(sorted(fields))})"
                )
            if not _fits(value, hints[key]):
                raise ConfigError(f"config.json: {key} must be {hints[key]}, got {value!r}")
            values[key] = value
        spec = ModelSpec(**values)
        spec.validate("config.json")
        self.mlp = spec.mlp
        return spec

    def tensor_name(
        self, hf_name: str, spec: ModelSpec | None = None, hf_config: dict[str, Any] | None = None
    ) -> str | None:
        return hf_name  # our own names

    def tp_plan(self) -> dict[str, str]:
        return decoder_tp_plan(self.mlp)


@hookimpl
def plugformer_register(registry):
    registry.register("family", "plugformer", Plugformer, PlugformerFamilyConfig)
