"""Freezes the plugin contract. A failure here means the contract changed: if that is
deliberate, bump ``plugformer.core.CONTRACT_VERSION`` and update the frozen values below."""

from __future__ import annotations

import inspect

import plugformer
from plugformer.core import CONTRACT_VERSION, hookspec
from plugformer.core.interfaces.attention import Attention
from plugformer.core.interfaces.checkpoint import Checkpoint, CheckpointFormat
from plugformer.core.interfaces.family import ModelFamily
from plugformer.core.interfaces.mlp import MLP
from plugformer.core.interfaces.norm import Norm
from plugformer.core.interfaces.parallel import ParallelStrategy
from plugformer.core.interfaces.positional import PositionalEncoding
from plugformer.core.interfaces.quant import Quantizer
from plugformer.core.interfaces.sampler import Sampler
from plugformer.core.registry import KINDS

FROZEN_VERSION = "1.2"

FROZEN_HOOKS = {
    # name: (signature, historic, firstresult)
    "plugformer_register": ("(registry: 'Registry') -> 'None'", True, False),
    "plugformer_engine_ready": ("(engine: 'Any') -> 'None'", False, False),
    "plugformer_generation_done": ("(engine: 'Any', results: 'list[Any]') -> 'None'", False, False),
}

FROZEN_KINDS = {
    "attention": "AttentionConfig",
    "positional": "PositionalConfig",
    "mlp": "MLPConfig",
    "norm": "NormConfig",
    "sampler": "SamplerConfig",
    "parallel": "ParallelConfig",
    "quant": "QuantConfig",
    "family": "FamilyConfig",
    "checkpoint": "CheckpointConfig",
}

FROZEN_PROTOCOLS = {
    Attention: ["__call__", "check"],
    PositionalEncoding: ["bias", "check", "prepare", "rotate"],
    MLP: ["__call__", "check"],
    Norm: ["__call__", "check"],
    Sampler: ["__call__", "check"],
    ParallelStrategy: ["check", "parallelize", "setup", "teardown"],
    Quantizer: ["check", "quantize"],
    ModelFamily: ["check", "spec_from_hf", "tensor_name", "tp_plan"],
    CheckpointFormat: ["check", "detect", "open"],
    Checkpoint: ["close", "tensor", "tensor_info", "tensor_names", "tokenizer"],
}

FROZEN_API = [
    "CONTRACT_VERSION",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Engine",
    "Generation",
    "ModelConfig",
    "PluginError",
    "PlugformerError",
    "RefusedError",
    "UnknownNameError",
    "ValidationError",
    "__version__",
    "compose",
    "hookimpl",
    "register",
]


def _hooks() -> dict[str, tuple[str, bool, bool]]:
    found = {}
    for name, fn in inspect.getmembers(hookspec, inspect.isfunction):
        opts = getattr(fn, "plugformer_spec", None)
        if opts is None:
            continue
        found[name] = (str(inspect.signature(fn)), opts["historic"], opts["firstresult"])
    return found


def test_contract_version_is_frozen():
    assert CONTRACT_VERSION == FROZEN_VERSION


def test_hook_names_and_signatures_are_frozen():
    assert _hooks() == FROZEN_HOOKS


def test_every_hook_is_documented_and_prefixed():
    for name, fn in inspect.getmembers(hookspec, inspect.isfunction):
        if getattr(fn, "plugformer_spec", None) is None:
            continue
        assert name.startswith("plugformer_")
        doc = inspect.getdoc(fn) or ""
        assert "Called" in doc and "Return value" in doc, name


def test_registry_kinds_are_frozen():
    assert {k: v.__name__ for k, v in KINDS.items()} == FROZEN_KINDS
    for base in KINDS.values():
        assert "name" in base.__dataclass_fields__


def test_interfaces_are_frozen():
    for proto, methods in FROZEN_PROTOCOLS.items():
        own = sorted(
            n
            for n, v in vars(proto).items()
            if callable(v) and (not n.startswith("_") or n == "__call__")
        )
        assert own == methods, proto.__name__


def test_python_api_names_are_frozen():
    assert sorted(plugformer.__all__) == sorted(FROZEN_API)
    for name in FROZEN_API:
        assert hasattr(plugformer, name), name
