"""What a plugin author reads when something is slightly off (issue 14, item 7): blocked names
(separator, PEP 503 distribution names, a warning for a name that blocks nothing), the
misspelled-hook error, the unknown-name message, and the model `config`/`bench` report."""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pluggy
import pytest

import plugformer
from plugformer.core import cli, loader
from plugformer.core.errors import UnknownNameError

ENV_VARS = (loader.ENV_BLOCK, loader.ENV_DISABLE_AUTOLOAD, "PLUGFORMER_TRACEBACK")

ECHO = """
    from dataclasses import dataclass

    from plugformer.core import hookimpl
    from plugformer.core.interfaces.attention import AttentionConfig


    @dataclass
    class EchoConfig(AttentionConfig):
        name: str = "echo_msg"


    class Echo:
        def __init__(self, config, dims):
            pass

        def check(self):
            return []


    @hookimpl
    def plugformer_register(registry):
        registry.register("attention", "echo_msg", Echo, EchoConfig)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fake installed distribution ``Fancy_Echo.Plugins`` 0.1 (entry point ``echo``), on
    sys.path, with a clean plugin environment and fresh plugin managers."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "site"
    root.mkdir()
    info = root / "Fancy_Echo.Plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: Fancy_Echo.Plugins\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{loader.ENTRY_POINT_GROUP}]\necho = echo_msg_plugin\n"
    )
    (root / "echo_msg_plugin.py").write_text(textwrap.dedent(ECHO))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    loader.reset()
    yield root
    loader.reset()
    sys.modules.pop("echo_msg_plugin", None)


@pytest.fixture
def clean(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    loader.reset()
    yield
    loader.reset()


def attention(settings: loader.PluginSettings | None = None) -> set[str]:
    return set(loader.get_plugins(settings).registry.names("attention"))


# -- blocking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["Fancy_Echo.Plugins", "fancy-echo-plugins", "FANCY_ECHO_PLUGINS", "fancy.echo--plugins"],
)
def test_distribution_names_block_as_pep_503_normalises_them(site, spelling):
    assert "echo_msg" in attention()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name that blocks something is no warning
        assert "echo_msg" not in attention(loader.PluginSettings(block=[spelling]))
    assert loader.normalize_distribution(spelling) == "fancy-echo-plugins"


def test_plugin_names_block_exactly(site):
    assert "echo_msg" not in attention(loader.PluginSettings(block=["echo"]))
    with pytest.warns(UserWarning) as caught:
        assert "echo_msg" in attention(loader.PluginSettings(block=["ECHO"]))
    assert [str(w.message) for w in caught] == [
        "plugins.block: 'ECHO' matches no plugin or distribution, so it blocks nothing"
    ]


def test_the_environment_list_is_comma_separated(site, monkeypatch):
    monkeypatch.setenv(loader.ENV_BLOCK, " echo ,plugformer.plugins.attention.mha,, ")
    assert loader._env_block() == {"echo", "plugformer.plugins.attention.mha"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = attention()
    assert "echo_msg" not in names and "mha" not in names and "gqa" in names


def test_a_name_that_blocks_nothing_is_a_warning_naming_it(site, monkeypatch):
    monkeypatch.setenv(loader.ENV_BLOCK, "ehco")
    with pytest.warns(UserWarning) as caught:
        names = attention(loader.PluginSettings(block=["nothing-like-it"]))
    assert "echo_msg" in names  # nothing was blocked
    assert [str(w.message) for w in caught] == [
        "PLUGFORMER_BLOCK_PLUGINS: 'ehco' matches no plugin or distribution, so it blocks "
        "nothing; did you mean 'echo'?",
        "plugins.block: 'nothing-like-it' matches no plugin or distribution, so it blocks nothing",
    ]


def test_a_wrong_separator_gets_a_hint(site, monkeypatch):
    monkeypatch.setenv(loader.ENV_BLOCK, "echo;plugformer.plugins.attention.mha")
    with pytest.warns(UserWarning) as caught:
        assert "echo_msg" in attention()
    assert [str(w.message) for w in caught] == [
        "PLUGFORMER_BLOCK_PLUGINS: 'echo;plugformer.plugins.attention.mha' matches no plugin or "
        "distribution, so it blocks nothing; separate names with commas: "
        "echo,plugformer.plugins.attention.mha"
    ]


def test_a_distribution_name_counts_as_known_with_autoload_off(site):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = loader.PluginSettings(block=["fancy-echo-plugins"], autoload=False)
        assert "echo_msg" not in attention(off)


# -- the misspelled hook -----------------------------------------------------------------------


def _module(name: str, *hooks: str) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook in hooks:

        def impl(registry=None, engine=None, results=None):
            raise AssertionError("a hook that does not exist is never called")

        impl.__name__ = hook
        setattr(module, hook, plugformer.hookimpl(impl))
    return module


def test_a_misspelled_hook_suggests_the_real_one_once(clean):
    loaded = loader.get_plugins()
    with pytest.raises(plugformer.PluginError) as info:
        plugformer.register(_module("typo_script", "plugformer_registr"))
    message = str(info.value)
    assert message == (
        "plugin 'typo_script' (local) implements an unknown hook 'plugformer_registr'; "
        "did you mean 'plugformer_register'?"
    )
    assert message.count("unknown hook") == 1 and "<module" not in message
    assert isinstance(info.value.__cause__, pluggy.PluginValidationError)
    assert loader._user_plugins == [] and not loaded.manager.has_plugin("typo_script")


def test_a_misspelled_hook_found_at_load_time_reads_the_same(clean):
    plugformer.register(_module("typo_early", "plugformer_engine_redy"))  # nothing loaded yet
    with pytest.raises(plugformer.PluginError) as info:
        loader.get_plugins()
    assert str(info.value) == (
        "plugin 'typo_early' (local) implements an unknown hook 'plugformer_engine_redy'; "
        "did you mean 'plugformer_engine_ready'?"
    )
    assert isinstance(info.value.__cause__, pluggy.PluginValidationError)


def test_unknown_hooks_without_a_close_name_list_the_hooks(clean):
    loader.get_plugins()
    with pytest.raises(plugformer.PluginError) as info:
        plugformer.register(_module("odd_script", "plugformer_zzz", "plugformer_registr"))
    assert str(info.value) == (
        "plugin 'odd_script' (local) implements unknown hooks 'plugformer_registr' (did you "
        "mean 'plugformer_register'?) and 'plugformer_zzz'. The hooks are: "
        "plugformer_engine_ready, plugformer_generation_done, plugformer_register"
    )


# -- unknown names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, valid, message",
    [
        ("zzz", ["gqa", "mha"], "unknown attention 'zzz'. Valid names: gqa, mha"),
        (
            "gqx",
            ["mha", "gqa"],
            "unknown attention 'gqx'; did you mean 'gqa'? Valid names: gqa, mha",
        ),
        ("gqa", [], "unknown attention 'gqa'. Valid names: (none registered)"),
    ],
)
def test_unknown_name_messages_are_punctuated(name, valid, message):
    err = UnknownNameError("attention", name, valid)
    assert str(err) == message
    assert err.valid == sorted(valid)


# -- the model config and bench report ---------------------------------------------------------


def test_config_names_the_checkpoint_at_model_path(capsys, tmp_path):
    ckpt = tmp_path / "My-Checkpoint"
    assert cli.main(["config", f"model.path={ckpt}/"]) == 0
    header, out = capsys.readouterr().out.split("\n", 1)
    assert header.startswith("# model.spec: not read (")  # there is no checkpoint there
    assert out.startswith(f"model:\n  name: My-Checkpoint\n  path: {ckpt}/\n  source: null\n")
    assert "smollm2" not in out.lower()
    assert cli.main(["config", f"model.path={ckpt}/model.Q4_1.gguf"]) == 0
    assert "  name: model.Q4_1.gguf\n" in capsys.readouterr().out
    assert cli.main(["config"]) == 0
    header, out = capsys.readouterr().out.split("\n", 1)
    assert header.startswith("# model.spec: read from ")
    assert "\n    max_seq_len: 8192\n" in out  # SmolLM2's own context, not the default 2048
    assert out.startswith("model:\n  name: smollm2-135m-instruct\n  path: null\n  source:\n")


def test_config_shows_the_spec_read_from_the_checkpoint(capsys, tiny_hf_llama, tmp_path):
    """``plugformer config`` shows the spec of the model that loads, not the zeros of the
    composed default: the sizes and context length of the checkpoint's own config."""
    hf = tiny_hf_llama(max_position_embeddings=333)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert cli.main(["config", f"model.path={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# model.spec: read from {tmp_path}\n")
    c = hf.config
    for key, value in [
        ("vocab_size", c.vocab_size), ("hidden_size", c.hidden_size),
        ("num_layers", c.num_hidden_layers), ("num_heads", c.num_attention_heads),
        ("num_kv_heads", c.num_key_value_heads), ("intermediate_size", c.intermediate_size),
        ("max_seq_len", 333),
    ]:  # fmt: skip
        assert f"\n    {key}: {value}\n" in out, key


def test_bench_reports_the_checkpoint_it_loaded(tiny_hf_llama, tmp_path):
    from plugformer.core.commands import bench

    path = tmp_path / "tiny-llama-ckpt"
    tiny_hf_llama().save_pretrained(path, safe_serialization=True)
    config = plugformer.compose([f"model.path={path}"])
    assert config.model.name == "smollm2-135m-instruct"  # what composition leaves
    result = bench.run(config, prefill_tokens=16, new_tokens=4, batch=2)
    assert result["model"] == "tiny-llama-ckpt"
    assert result["model_path"] == str(path)
    assert bench.model_label(plugformer.compose(["model=tiny"]).model) == "tiny"
    assert "model_path" not in bench.run(
        plugformer.compose(["model=tiny"]), prefill_tokens=16, new_tokens=4, batch=2
    )


def test_model_label_of_relative_paths(monkeypatch, tmp_path):
    from plugformer.core.commands import bench
    from plugformer.core.config import ModelConfig

    monkeypatch.chdir(tmp_path)
    assert bench.model_label(ModelConfig(name="zoo", path=".")) == tmp_path.name
    assert bench.model_label(ModelConfig(name="zoo", path="ckpt/")) == "ckpt"
    assert bench.model_label(ModelConfig(name="zoo", path="/")) == str(Path("/").resolve())
