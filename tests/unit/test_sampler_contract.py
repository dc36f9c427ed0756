"""The sampler contract (issue 14, item 6): one knob, one meaning, checked at registration; the
chain's order and tie rule; the temperature each option implies; the form of a refusal."""

from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from transformers import TopPLogitsWarper

import plugformer
from plugformer.core import cli, loader
from plugformer.core.errors import (
    DuplicateKnobError,
    DuplicateNameError,
    PluginError,
    RefusedError,
    SamplerRefusedError,
    ValidationError,
)
from plugformer.core.interfaces import sampler as sampler_interface
from plugformer.core.interfaces.sampler import SamplerConfig, SamplingContext, knob
from plugformer.core.registry import Registry, Source
from plugformer.core.sampling import SamplerChain, sampler_options, with_overrides

V = 64


def ctx(b: int = 2) -> SamplingContext:
    ids = torch.arange(b * 4).reshape(b, 4) % V  # [B, T]
    return SamplingContext(ids, torch.full((b,), 4))


# -- samplers a third party might write --------------------------------------------------------


@dataclass
class StrengthConfig(SamplerConfig):
    name: str = "strength"
    strength: float = field(default=0.5, metadata={"off": 0.0})


@dataclass
class IntStrengthConfig(SamplerConfig):
    name: str = "int_strength"
    strength: int = 0  # same name, another type (neutral 0 == 0.0: only the type differs)


@dataclass
class OtherOffConfig(SamplerConfig):
    name: str = "other_off"
    strength: float = field(default=0.5, metadata={"off": 1.0})  # same type, other neutral


@dataclass
class SameStrengthConfig(SamplerConfig):
    name: str = "same_strength"
    # identical type and neutral value, its own default when selected: a shared knob
    strength: float = field(default=2.0, metadata={"off": 0.0})


@dataclass
class TopKFloatConfig(SamplerConfig):
    name: str = "my_top_k"
    top_k: float = field(default=0.9, metadata={"off": 1.0})  # the built-in's knob, retyped


def _none(params: Any) -> None:
    return None


def test_a_knob_declared_with_another_type_is_refused_naming_both():
    registry = Registry()
    with registry.source(Source("distribution", "first", "pkg-one", "1.0")):
        registry.register("sampler", "strength", _none, StrengthConfig)
    second = registry.source(Source("distribution", "second", "pkg-two", "2.0"))
    with second, pytest.raises(DuplicateKnobError) as info:
        registry.register("sampler", "int_strength", _none, IntStrengthConfig)
    err = info.value
    assert isinstance(err, DuplicateNameError)  # the DuplicateNameError family: a ValueError
    assert (err.knob, err.sampler, err.other) == ("strength", "int_strength", "strength")
    assert str(err) == (
        "sampler 'int_strength' of second (pkg-two 2.0) declares knob 'strength' as int "
        "(neutral 0), but sampler 'strength' of first (pkg-one 1.0) already declares it as "
        "float (neutral 0.0); samplers share a knob only with the same type and neutral "
        "value: rename one"
    )
    assert registry.names("sampler") == ["strength"]  # the refused one is not registered


def test_a_knob_declared_with_another_neutral_value_is_refused():
    registry = Registry()
    registry.register("sampler", "strength", _none, StrengthConfig)
    with pytest.raises(DuplicateKnobError, match=r"as float \(neutral 1\.0\).*\(neutral 0\.0\)"):
        registry.register("sampler", "other_off", _none, OtherOffConfig)
    assert registry.names("sampler") == ["strength"]


def test_an_identical_declaration_shares_the_knob_with_its_own_default():
    registry = Registry()
    registry.register("sampler", "strength", _none, StrengthConfig)
    registry.register("sampler", "same_strength", _none, SameStrengthConfig)
    options = sampler_options(registry)
    assert options["strength"]().strength == 0.5
    assert options["same_strength"]().strength == 2.0
    assert [f.name for f in dataclasses.fields(options["strength"])] == ["name", "strength"]


def test_the_built_ins_share_temperature_and_nothing_else(registry):
    declared: dict[str, list[str]] = {}
    for entry in registry.entries("sampler"):
        for f in dataclasses.fields(entry.config):
            if f.name != "name":
                declared.setdefault(f.name, []).append(entry.name)
    shared = {k: v for k, v in declared.items() if len(v) > 1}
    assert shared == {"temperature": ["greedy", "temperature"]}
    assert plugformer.compose(["sampler=greedy"]).sampler.temperature == 0.0
    assert plugformer.compose(["sampler=temperature"]).sampler.temperature == 1.0


def test_a_plugin_retyping_a_built_in_knob_fails_to_register(monkeypatch):
    for var in (loader.ENV_BLOCK, loader.ENV_DISABLE_AUTOLOAD):
        monkeypatch.delenv(var, raising=False)
    loader.reset()
    try:
        loader.get_plugins()
        module = types.ModuleType("my_samplers")

        @plugformer.hookimpl
        def plugformer_register(registry):
            registry.register("sampler", "my_top_k", _none, TopKFloatConfig)

        module.plugformer_register = plugformer_register
        with pytest.raises(PluginError) as info:
            plugformer.register(module)
        assert isinstance(info.value.__cause__, DuplicateKnobError)
        assert str(info.value) == (
            "plugin 'my_samplers' (local) failed to register: sampler 'my_top_k' of my_samplers "
            "(local) declares knob 'top_k' as float (neutral 1.0), but sampler 'top_k' of "
            "plugformer.plugins.sampling.top_k (builtin) already declares it as int (neutral 0); "
            "samplers share a knob only with the same type and neutral value: rename one"
        )
        assert "my_top_k" not in loader.get_plugins().registry.names("sampler")
    finally:
        loader.reset()


# -- order: the documented table is the real one -----------------------------------------------

BUILT_IN_ORDER = [
    ("logit_bias", 10),
    ("repetition_penalty", 12),
    ("frequency_penalty", 14),
    ("presence_penalty", 15),
    ("no_repeat_ngram_size", 16),
    ("temperature", 20),
    ("top_k", 30),
    ("top_p", 40),
    ("min_p", 50),
    ("typical_p", 60),
    ("greedy", 90),
]

EVERY_KNOB_ACTIVE = {
    "logit_bias": {3: 1.5},
    "repetition_penalty": 1.2,
    "frequency_penalty": 0.3,
    "presence_penalty": 0.2,
    "no_repeat_ngram_size": 3,
    "temperature": 0.7,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.01,
    "typical_p": 0.99,
}


def test_the_documented_order_is_the_chain_order(registry):
    table = re.findall(r"^ (\d+)   (\w+) ", sampler_interface.__doc__ or "", re.MULTILINE)
    assert [(name, int(p)) for p, name in table] == BUILT_IN_ORDER
    params = plugformer.compose(["sampler=top_p"]).sampler
    chain = SamplerChain(registry, with_overrides(params, EVERY_KNOB_ACTIVE))
    assert chain.sampler_names == [name for name, _ in BUILT_IN_ORDER[:-1]]
    assert [s.priority for s in chain.samplers] == [p for _, p in BUILT_IN_ORDER[:-1]]
    greedy = SamplerChain(registry, with_overrides(params, {**EVERY_KNOB_ACTIVE, "temperature": 0}))
    assert greedy.sampler_names[-1] == "greedy" and greedy.samplers[-1].priority == 90
    assert "temperature" not in greedy.sampler_names  # temperature 0 builds greedy, not a divide


@dataclass
class AddConfig(SamplerConfig):
    name: str = "b_add"
    add: float = 0.0


@dataclass
class ScaleConfig(SamplerConfig):
    name: str = "a_scale"
    scale: float = 1.0


class _Op:
    priority = 50

    def __init__(self, fn) -> None:
        self.fn = fn

    def check(self) -> list[str]:
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        return self.fn(logits)


def _add(params: Any) -> _Op | None:
    a = knob(params, "add", 0.0)
    return None if a == 0 else _Op(lambda x: x + a)


def _scale(params: Any) -> _Op | None:
    s = knob(params, "scale", 1.0)
    return None if s == 1 else _Op(lambda x: x * s)


@pytest.mark.parametrize("register_order", [("b_add", "a_scale"), ("a_scale", "b_add")])
def test_equal_priorities_run_in_registry_name_order(register_order):
    registry = Registry()
    parts = {"b_add": (_add, AddConfig), "a_scale": (_scale, ScaleConfig)}
    for name in register_order:  # registration order does not matter
        registry.register("sampler", name, *parts[name])
    params = sampler_options(registry)["a_scale"](scale=3.0, add=1.0)
    chain = SamplerChain(registry, params)
    assert chain.sampler_names == ["a_scale", "b_add"]
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    # a_scale first, then b_add: 3x + 1 (the other order would give 3(x + 1))
    assert chain.process(logits, ctx(1)).tolist() == [[4.0, -5.0, 2.5]]


# -- the temperature each option implies -------------------------------------------------------


def test_only_greedy_sets_temperature_zero(registry):
    for name in registry.names("sampler"):
        temperature = plugformer.compose([f"sampler={name}"]).sampler.temperature
        assert temperature == (0.0 if name == "greedy" else 1.0), name
    assert plugformer.compose([]).sampler.name == "greedy"  # the default option


def test_top_p_samples_the_raw_distribution_at_temperature_one(registry):
    params = plugformer.compose(["sampler=top_p"]).sampler
    chain = SamplerChain(registry, params)
    assert chain.sampler_names == ["top_p"]  # no temperature step: 1.0 divides nothing
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(0)) * 3
    expected = TopPLogitsWarper(0.9)(torch.zeros(2, 1, dtype=torch.long), logits.clone())
    assert torch.equal(chain.process(logits, ctx()), expected)


def test_a_per_request_knob_on_a_greedy_config_stays_greedy(registry):
    greedy = plugformer.compose(["sampler=greedy"]).sampler
    chain = SamplerChain(registry, with_overrides(greedy, {"top_p": 0.9}))
    assert chain.sampler_names == ["top_p", "greedy"]
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(1))
    assert torch.equal(chain.sample(logits, ctx()), logits.argmax(-1))
    sampled = SamplerChain(registry, with_overrides(greedy, {"top_p": 0.9, "temperature": 1.0}))
    assert sampled.sampler_names == ["top_p"]


def test_penalty_options_sample_unless_greedy_is_selected(registry):
    assert plugformer.compose(["sampler=repetition_penalty"]).sampler.temperature == 1.0
    greedy = plugformer.compose(["sampler=greedy", "sampler.repetition_penalty=1.2"]).sampler
    assert SamplerChain(registry, greedy).sampler_names == ["repetition_penalty", "greedy"]


# -- refusals ------------------------------------------------------------------------------------


def test_a_refusal_has_the_common_form_and_stays_a_validation_error(registry):
    params = plugformer.compose(["sampler=top_p"]).sampler
    with pytest.raises(SamplerRefusedError) as info:
        SamplerChain(registry, with_overrides(params, {"top_p": 0.0}))
    err = info.value
    assert str(err) == "sampler 'top_p' refused: top_p must be in (0, 1], got 0.0"
    assert isinstance(err, RefusedError) and isinstance(err, ValidationError)
    assert (err.kind, err.name) == ("sampler", "top_p")
    assert err.reasons == ["top_p must be in (0, 1], got 0.0"]
    assert err.exit_code == 2  # a bad argument, as before


@dataclass
class PickyConfig(SamplerConfig):
    name: str = "picky"
    picky: int = 0


class _Picky(_Op):
    def check(self) -> list[str]:
        return ["picky must be even", "picky must be below 10"]


def test_every_reason_of_one_sampler_is_listed():
    registry = Registry()
    registry.register("sampler", "picky", lambda p: _Picky(None) if p.picky else None, PickyConfig)
    params = sampler_options(registry)["picky"](picky=11)
    with pytest.raises(ValidationError) as info:
        SamplerChain(registry, params)
    assert str(info.value) == "sampler 'picky' refused: picky must be even; picky must be below 10"


def test_the_cli_reports_a_sampler_refusal_in_one_line(capsys):
    assert cli.main(["generate", "model=tiny", "prompt=hi", "sampler.top_k=-1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "plugformer: error: sampler 'top_k' refused: top_k must be an integer >= 0 "
        "(0 disables), got -1\n"
    )
