"""Freezes the plugin contract. A failure here means the contract changed: if that is
deliberate, bump ``plugformer.core.CONTRACT_VERSION`` and update the frozen values below."""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path

import pytest

import plugformer
import plugformer.core
from plugformer.core import CONTRACT_VERSION, hookspec
from plugformer.core.interfaces.adapter import Adapter, AdapterLayer
from plugformer.core.interfaces.attention import Attention
from plugformer.core.interfaces.checkpoint import Checkpoint, CheckpointFormat
from plugformer.core.interfaces.family import ModelFamily
from plugformer.core.interfaces.mlp import MLP
from plugformer.core.interfaces.norm import Norm
from plugformer.core.interfaces.optimizer import Optimizer
from plugformer.core.interfaces.parallel import ParallelStrategy
from plugformer.core.interfaces.positional import PositionalEncoding
from plugformer.core.interfaces.quant import Quantizer
from plugformer.core.interfaces.sampler import Sampler
from plugformer.core.interfaces.schedule import Schedule
from plugformer.core.registry import KINDS

# 2.0: interfaces moved to core/interfaces/ and re-exported from plugformer.core; optional
# capabilities declared (FROZEN_CAPABILITIES); 1.x module paths kept as deprecated aliases.
# 2.1: the adapter kind (core/interfaces/adapter.py), added; nothing else changed
FROZEN_VERSION = "2.1"

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
    "optimizer": "OptimizerConfig",
    "schedule": "ScheduleConfig",
    "adapter": "AdapterConfig",
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
    Optimizer: ["check", "load_state_dict", "state_dict", "step", "zero_grad"],
    Schedule: ["__call__", "check"],
    Adapter: ["check", "make", "peft_config"],
    AdapterLayer: ["forward", "merged_weight"],
}

# every optional attribute the core reads from a plugin object: module -> {name: default}
FROZEN_CAPABILITIES = {
    "attention": {"softmax_attention": False, "window": None},
    "checkpoint": {"drop_pages": None, "quantized_type": None, "tensor_as": None},
    "family": {"tensor_parts": None},
    "mlp": {"fuse_projections": None},
    "norm": {"plain_rms": False, "unit_offset": False},
    "parallel": {"attention_heads": None, "data_parallel": False},
    "positional": {"embed": None},
    "quant": {"calibration": None, "keeps_checkpoint_quantization": False, "seconds": None},
    "quant.LAYER": {"keep_dtype": (), "kernel_tensors": None, "quantized_weights": None},
}

# what a plugin author imports from plugformer.core (the interfaces and hookimpl)
FROZEN_CORE_EXPORTS = [
    "ACTIVATIONS", "Adapter", "AdapterConfig", "AdapterDims", "AdapterLayer", "Attention",
    "AttentionConfig", "AttentionDims", "CONTRACT_VERSION", "Capability", "Checkpoint",
    "CheckpointConfig", "CheckpointFormat", "FamilyBase", "FamilyConfig", "MLP", "MLPConfig",
    "MLPDims", "ModelFamily", "ModelSpec", "Norm", "NormConfig", "NormDims", "Optimizer",
    "OptimizerConfig", "OptimizerSettings", "ParallelConfig", "ParallelStrategy", "PositionalBase",
    "PositionalConfig", "PositionalDims", "PositionalEncoding", "QuantConfig", "QuantizedWeights",
    "Quantizer", "STYLES", "Sampler", "SamplerConfig", "SamplingContext", "Schedule",
    "ScheduleConfig", "ScheduleDims", "TensorPart", "Tokenizer", "activation", "base_weight",
    "capability", "decay_groups", "expect_shape", "generated_slots", "hookimpl", "knob",
    "signed_penalty_problems",
]  # fmt: skip

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
    "train",
    "Trainer",
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


def test_optional_capabilities_are_declared_and_frozen():
    found = {}
    for kind in FROZEN_CAPABILITIES:
        if "." in kind:
            continue
        module = importlib.import_module(f"plugformer.core.interfaces.{kind}")
        found[kind] = {n: c.default for n, c in module.CAPABILITIES.items()}
        for name, cap in module.CAPABILITIES.items():
            assert cap.meaning.strip(), (kind, name)  # every capability says what it means
    layer = importlib.import_module("plugformer.core.interfaces.quant").LAYER_CAPABILITIES
    found["quant.LAYER"] = {n: c.default for n, c in layer.items()}
    assert found == FROZEN_CAPABILITIES


def test_plugin_authors_import_everything_from_plugformer_core():
    assert sorted(plugformer.core.__all__) == sorted(FROZEN_CORE_EXPORTS)
    for name in FROZEN_CORE_EXPORTS:
        assert getattr(plugformer.core, name) is not None, name


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("plugformer.core.attention", "AttentionConfig", "plugformer.core.interfaces.attention"),
        ("plugformer.core.sampler", "SamplerConfig", "plugformer.core.interfaces.sampler"),
        ("plugformer.core.model.spec", "ModelSpec", "plugformer.core.interfaces.spec"),
        ("plugformer.core.tokenizer", "ByteTokenizer", "plugformer.core.tokenizers.byte"),
        ("plugformer.core.quant", "QuantConfig", "plugformer.core.interfaces.quant"),
        ("plugformer.core.parallel", "ParallelConfig", "plugformer.core.interfaces.parallel"),
        ("plugformer.core.qlinear", "QuantLinear", "plugformer.core.quant.linear"),
    ],
)
def test_contract_1_paths_still_import_with_a_deprecation_warning(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_1x_plugin_module_still_loads():
    source = (
        "from plugformer.core.attention import AttentionConfig, AttentionDims\n"
        "from plugformer.core.positional import PositionalConfig\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace: dict = {}
        exec(compile(source, "old_plugin.py", "exec"), namespace)
    assert namespace["AttentionConfig"] is plugformer.core.AttentionConfig
    assert namespace["PositionalConfig"] is plugformer.core.PositionalConfig
    assert {type(w.message) for w in caught} == {DeprecationWarning}
    assert len(caught) == 3  # one per name, each naming its new path
    with pytest.raises(ImportError):
        exec("from plugformer.core.attention import NoSuchName", {})


def test_every_spec_field_is_documented_in_the_interface_and_the_readme():
    import dataclasses

    from plugformer.core.interfaces import spec as spec_module

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    doc = spec_module.__doc__ or ""
    for f in dataclasses.fields(spec_module.ModelSpec):
        assert f"\n{f.name} " in doc, f"{f.name} missing from core/interfaces/spec.py's table"
        assert f"`{f.name}`" in readme, f"{f.name} missing from the README's ModelSpec table"
