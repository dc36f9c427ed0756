"""Hydra composition: groups from the registry, plain dataclasses out, clear errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import plugformer
from plugformer.core.config import GROUP_KINDS, Config, compose_dictconfig
from plugformer.core.errors import ConfigError, UnknownNameError
from plugformer.core.loader import get_plugins

ROOT = Path(__file__).resolve().parents[2]


def test_compose_returns_plain_dataclasses():
    cfg = plugformer.compose(["attention=mha", "attention.impl=reference", "positional=alibi"])
    assert type(cfg) is Config
    assert type(cfg.attention).__name__ == "MHAConfig"
    assert cfg.attention.impl == "reference"
    assert cfg.positional.name == "alibi" and cfg.positional.max_bias == 8.0
    assert type(cfg.model.spec).__name__ == "ModelSpec"
    assert "DictConfig" not in repr(cfg)


def test_one_group_option_per_registered_name():
    registry = get_plugins().registry
    for kind in GROUP_KINDS:
        for name in registry.names(kind):
            cfg = compose_dictconfig([f"{kind}={name}"])
            assert cfg[kind]["name"] == name


def test_sampler_options_share_every_knob_with_the_selected_defaults():
    cfg = plugformer.compose(["sampler=top_p", "sampler.temperature=0.7", "sampler.top_p=0.8"])
    assert (cfg.sampler.name, cfg.sampler.temperature, cfg.sampler.top_p) == ("top_p", 0.7, 0.8)
    assert cfg.sampler.top_k == 0  # not selected: neutral
    assert plugformer.compose(["sampler=top_k"]).sampler.top_k == 50
    assert plugformer.compose(["sampler=greedy"]).sampler.temperature == 0.0
    assert plugformer.compose(["sampler=temperature"]).sampler.temperature == 1.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["sampler.top_k=abc"],
            "sampler.top_k: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (["model.spec.num_layers=1.5"], "model.spec.num_layers:"),
        (
            ["attention=gqa", "attention.impll=sdpa"],
            "attention.impll: unknown key; did you mean 'attention.impl'?",
        ),
        (["promt=hi"], "promt: unknown key; did you mean 'prompt'?"),
        (
            ["attention=gqx"],
            "unknown attention 'gqx'; did you mean 'gqa'? Valid names: auto, gqa, mha",
        ),
        (["model=tinyy"], "unknown model 'tinyy'; did you mean 'tiny'?"),
        (["max_new_tokens=[1"], "bad override"),
    ],
)
def test_bad_overrides_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        plugformer.compose(overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_option_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError) as info:
        plugformer.compose(["positional=alibii"])
    assert info.value.valid == [
        "alibi",
        "auto",
        "learned",  # contract 2.0: absolute positions
        "none",
        "rope",
        "rope_dynamic",
        "rope_linear",
        "rope_llama3",
        "rope_yarn",
        "sinusoidal",
    ]


def test_no_target_anywhere_in_conf():
    for path in (ROOT / "conf").rglob("*.yaml"):
        assert "_target_" not in path.read_text(), path


def test_a_target_in_an_override_is_not_instantiated(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match="_target_ is not allowed"):
        plugformer.compose(["+attention._target_=os.system", f"+attention._args_=[touch {marker}]"])
    with pytest.raises(ConfigError, match=r"attention\.foo: unknown key"):
        plugformer.compose(["attention=gqa", "+attention.foo=1"])  # never dropped silently
    cfg = plugformer.compose(["model=tiny"])
    plugformer.Engine(cfg)
    assert not marker.exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plugformer", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_config_errors_exit_2_with_one_line():
    for args, key in [
        (("config", "sampler.top_k=abc"), "sampler.top_k"),
        (("config", "attention.foo=1"), "attention.foo"),
        (("generate", "model=tiny"), "prompt"),
    ]:
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("plugformer: error: ") and key in lines[0]


def test_missing_mandatory_value_names_the_key(monkeypatch):
    from dataclasses import dataclass

    from plugformer.core.interfaces.attention import AttentionConfig
    from plugformer.core.loader import reset

    @dataclass
    class NeedsCap(AttentionConfig):
        name: str = "needs_cap"
        cap: float = "???"  # type: ignore[assignment]  # OmegaConf's MISSING

    class Plugin:
        @staticmethod
        @plugformer.hookimpl
        def plugformer_register(registry):
            registry.register("attention", "needs_cap", lambda c, d: None, NeedsCap)

    reset()
    try:
        plugformer.register(Plugin, "needs-cap")
        with pytest.raises(ConfigError, match=r"attention.cap: missing value"):
            plugformer.compose(["attention=needs_cap"])
    finally:
        reset()
