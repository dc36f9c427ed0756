"""Plugin loading: third-party distributions, broken plugins, blocking, late registration.

Third-party plugins come from small fake distributions built in temporary directories (a
``*.dist-info`` with ``METADATA`` and ``entry_points.txt`` next to a module), put on
``sys.path``: to ``importlib.metadata`` they are installed packages like any other.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pluggy
import pytest
import torch

import plugformer
from plugformer.core import cli, loader
from plugformer.core.errors import DuplicateNameError
from plugformer.core.interfaces.attention import AttentionConfig
from plugformer.core.registry import Registry, Source

ENV_VARS = (loader.ENV_BLOCK, loader.ENV_DISABLE_AUTOLOAD, "PLUGFORMER_TRACEBACK")
TINY = "model=tiny"  # the debug-size random model: no download

GOOD = """
    from dataclasses import dataclass

    from plugformer.core import hookimpl
    from plugformer.core.interfaces.attention import AttentionConfig


    @dataclass
    class EchoConfig(AttentionConfig):
        name: str = "echo"


    class Echo:
        def __init__(self, config, dims):
            self.dims = dims

        def check(self):
            return []

        def __call__(self, q, k, v, bias):
            return q


    @hookimpl
    def plugformer_register(registry):
        registry.register("attention", "echo", Echo, EchoConfig)
"""

DUPLICATE = """
    from plugformer.core import hookimpl


    class Twin:
        def __init__(self, config, dims):
            pass

        def check(self):
            return []


    @hookimpl
    def plugformer_register(registry):
        registry.register("attention", "gqa", Twin)
"""

WRONG_SIGNATURE = """
    from plugformer.core import hookimpl


    @hookimpl
    def plugformer_register(registry, engine):
        pass
"""

MISSPELLED = """
    from plugformer.core import hookimpl


    @hookimpl
    def plugformer_registr(registry):
        raise AssertionError("a hook that does not exist is never called")
"""


class FakeDists:
    """Builds fake installed distributions under one temporary directory on ``sys.path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def add(self, dist: str, version: str, entry_points: dict[str, str], **modules: str) -> None:
        """A distribution ``dist`` ``version`` with plugin entry points {name: "module[:attr]"}
        and top-level modules {module name: source}."""
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = [f"{name} = {target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text(f"[{loader.ENTRY_POINT_GROUP}]\n" + "\n".join(lines))
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.append(module)
        importlib.invalidate_caches()

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for a CLI subprocess that sees these distributions."""
        environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.root), os.environ.get("PYTHONPATH")])
        )
        environ.update(extra)
        return environ


@pytest.fixture
def dists(tmp_path, monkeypatch):
    """Fake distributions on sys.path, a clean plugin environment and fresh plugin managers."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    fake = FakeDists(root)
    loader.reset()
    yield fake
    loader.reset()
    for module in fake.modules:
        sys.modules.pop(module, None)


@pytest.fixture
def clean(monkeypatch):
    """No third-party fakes, a clean plugin environment and fresh plugin managers."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    loader.reset()
    yield
    loader.reset()


def plugformer_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plugformer", *args], capture_output=True, text=True, env=env
    )


# -- a third-party plugin that cannot be imported ------------------------------------------------

IMPORT_FAILURES = {
    "missing-dependency": (
        "broken_dep",
        {"broken_dep": "import plugformer_no_such_dependency\n"},
        "ModuleNotFoundError: No module named 'plugformer_no_such_dependency'",
    ),
    "raises-at-import": (
        "broken_raise",
        {"broken_raise": "raise RuntimeError('needs CUDA 13')\n"},
        "RuntimeError: needs CUDA 13",
    ),
    "syntax-error": (
        "broken_syntax",
        {"broken_syntax": "def plugformer_register(registry)\n    pass\n"},
        "SyntaxError: ",
    ),
    "missing-attribute": (
        "broken_attr:plugin",
        {"broken_attr": "x = 1\n"},
        "AttributeError: ",
    ),
    "missing-module": (
        "broken_nowhere",
        {},
        "ModuleNotFoundError: No module named 'broken_nowhere'",
    ),
}


@pytest.mark.parametrize(
    "target, modules, cause", IMPORT_FAILURES.values(), ids=IMPORT_FAILURES.keys()
)
def test_import_failure_stops_loading_naming_plugin_and_distribution(dists, target, modules, cause):
    dists.add("fake-broken", "1.2.3", {"broken": target}, **modules)
    for _ in range(2):  # never cached as "loaded without it": every attempt fails the same way
        with pytest.raises(plugformer.PluginError) as info:
            plugformer.compose([])
        message = str(info.value)
        assert message.startswith(
            "plugin 'broken' (distribution fake-broken 1.2.3) failed to import: " + cause
        )
        assert "\n" not in message
        assert info.value.__cause__ is not None  # the original error, for --traceback
    # blocking it by name or by distribution, or switching autoload off, lets start-up go on
    assert plugformer.compose(["plugins.block=[broken]"]).plugins.block == ["broken"]
    assert plugformer.compose(["plugins.block=[fake-broken]"]).plugins.block == ["fake-broken"]
    assert plugformer.compose(["plugins.autoload=false"]).plugins.autoload is False


MULTILINE_CAUSES = {
    "import": (
        "raise RuntimeError('first line\\nsecond line')\n",
        "failed to import: RuntimeError: first line second line",
    ),
    "hook-signature": (WRONG_SIGNATURE, "is invalid: Plugin 'broken' for hook"),
}


@pytest.mark.parametrize("source, what", MULTILINE_CAUSES.values(), ids=MULTILINE_CAUSES.keys())
def test_multiline_causes_are_still_one_line(dists, source, what):
    dists.add("fake-broken", "1.2.3", {"broken": "broken_lines"}, broken_lines=source)
    with pytest.raises(plugformer.PluginError) as info:
        plugformer.compose([])
    message = str(info.value)
    assert message.startswith(f"plugin 'broken' (distribution fake-broken 1.2.3) {what}")
    assert "\n" not in message


# -- a third-party plugin that registers badly ---------------------------------------------------

BAD_REGISTRATIONS = {
    "duplicate-name": (
        DUPLICATE,
        "failed to register: attention 'gqa' is already registered by "
        "plugformer.plugins.attention.gqa (builtin)",
    ),
    "raises-in-hook": (
        """
        from plugformer.core import hookimpl

        @hookimpl
        def plugformer_register(registry):
            raise KeyError("boom")
        """,
        "failed to register: KeyError: 'boom'",
    ),
    "unknown-kind": (
        """
        from plugformer.core import hookimpl

        @hookimpl
        def plugformer_register(registry):
            registry.register("atention", "x", print)
        """,
        "failed to register: unknown registry kind 'atention'; did you mean 'attention'?",
    ),
    "config-not-a-dataclass": (
        """
        from plugformer.core import hookimpl

        class Config:
            name = "plain"

        @hookimpl
        def plugformer_register(registry):
            registry.register("attention", "plain", print, Config)
        """,
        "failed to register: attention 'plain': config must be a dataclass deriving from "
        "AttentionConfig",
    ),
    # pluggy's message spans lines: see test_multiline_causes_are_still_one_line
    "wrong-hook-signature": (WRONG_SIGNATURE, "is invalid: Plugin 'bad' for hook"),
}


@pytest.mark.parametrize("source, what", BAD_REGISTRATIONS.values(), ids=BAD_REGISTRATIONS.keys())
def test_bad_registration_stops_loading_naming_plugin_and_distribution(dists, source, what):
    dists.add("fake-bad", "0.3", {"bad": "bad_plugin"}, bad_plugin=source)
    with pytest.raises(plugformer.PluginError) as info:
        loader.get_plugins()
    message = str(info.value)
    assert message.startswith("plugin 'bad' (distribution fake-bad 0.3) " + what)
    if source is not WRONG_SIGNATURE:
        assert "\n" not in message


def test_duplicate_name_is_a_plugin_error_caused_by_the_registry(dists):
    dists.add("fake-dup", "0.3", {"dup": "dup_plugin"}, dup_plugin=DUPLICATE)
    with pytest.raises(plugformer.PluginError) as info:
        plugformer.compose(["attention=gqa"])
    assert isinstance(info.value.__cause__, DuplicateNameError)
    assert "'dup'" in str(info.value) and "'gqa'" in str(info.value)


def test_misspelled_hook_fails_check_pending(dists):
    dists.add("fake-typo", "2.0", {"typo": "typo_plugin"}, typo_plugin=MISSPELLED)
    with pytest.raises(plugformer.PluginError) as info:
        loader.get_plugins()
    message = str(info.value)
    assert message.startswith("plugin 'typo' ")
    assert "unknown hook 'plugformer_registr'" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, pluggy.PluginValidationError)  # check_pending


def test_misspelled_hook_error_names_the_distribution(dists):
    dists.add("fake-typo", "2.0", {"typo": "typo_plugin"}, typo_plugin=MISSPELLED)
    with pytest.raises(plugformer.PluginError) as info:
        loader.get_plugins()
    assert str(info.value).startswith("plugin 'typo' (distribution fake-typo 2.0) ")


# -- the CLI: one line, a traceback only when asked --------------------------------------------


def test_cli_reports_a_broken_plugin_in_one_line(dists):
    dists.add("fake-broken", "1.2.3", {"broken": "broken_cli"}, broken_cli="import no_such_dep_x\n")
    done = plugformer_cli(dists.env(), "plugins")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "plugformer: error: plugin 'broken' (distribution fake-broken 1.2.3) failed to import: "
        "ModuleNotFoundError: No module named 'no_such_dep_x'\n"
    )

    traced = plugformer_cli(dists.env(), "generate", "--traceback", TINY, "prompt=hi")
    assert traced.returncode == 1
    assert traced.stderr.startswith("Traceback (most recent call last):")
    assert "import no_such_dep_x" in traced.stderr  # the plugin's own line is shown
    assert traced.stderr.endswith(done.stderr)  # ... and the one-line error last


@pytest.mark.parametrize(
    "dist, plugin, source, first_words",
    [
        ("fake-dup", "dup", DUPLICATE, "plugin 'dup' (distribution fake-dup 0.1) failed"),
        ("fake-typo", "typo", MISSPELLED, "plugin 'typo' "),
    ],
    ids=["duplicate", "misspelled-hook"],
)
def test_cli_reports_bad_plugins_in_one_line(dists, capsys, dist, plugin, source, first_words):
    dists.add(dist, "0.1", {plugin: f"{plugin}_cli"}, **{f"{plugin}_cli": source})
    for command in (["plugins"], ["config"], ["generate", TINY, "prompt=hi"]):
        assert cli.main(command) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("plugformer: error: " + first_words)
    assert cli.main(["plugins", "--traceback"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("plugformer: error: " + first_words)
    # blocked, the rest of plugformer works
    assert cli.main(["config", f"plugins.block=[{plugin}]"]) == 0
    assert f"- {plugin}" in capsys.readouterr().out


# -- sources, blocking, disabling autoload --------------------------------------------------------


def test_each_entry_records_its_source(dists, capsys):
    dists.add("fake-good", "4.5.6", {"good": "good_plugin"}, good_plugin=GOOD)
    local = types.ModuleType("my_local_plugin")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("attention", "mine", lambda config, dims: None)

    local.plugformer_register = plugformer_register
    plugformer.register(local)

    plugins = loader.get_plugins()
    registry = plugins.registry
    for entry in registry.entries():
        if entry.name in ("echo", "mine"):
            continue
        assert entry.source.origin == "builtin"
        assert entry.source.plugin in loader.BUILTIN_PLUGINS
        assert entry.source.distribution is None
    assert registry.get("attention", "gqa").source == Source(
        "builtin", "plugformer.plugins.attention.gqa"
    )
    assert registry.get("attention", "echo").source == Source(
        "distribution", "good", "fake-good", "4.5.6"
    )
    assert registry.get("attention", "mine").source == Source("local", "my_local_plugin")
    # load order: built-ins, then entry points, then plugins registered from Python
    names = [name for name, _ in plugins.loaded]
    assert names == [*loader.BUILTIN_PLUGINS, "good", "my_local_plugin"]

    assert cli.main(["plugins"]) == 0
    rows = {
        tuple(line.split()[:2]): line.split()[2:] for line in capsys.readouterr().out.splitlines()
    }
    assert rows[("attention", "gqa")] == [
        "builtin",
        plugformer.__version__,
        "plugformer.plugins.attention.gqa",
    ]
    assert rows[("attention", "echo")] == ["fake-good", "4.5.6", "good"]
    assert rows[("attention", "mine")] == ["local", "my_local_plugin"]  # no version


def test_blocking_and_disabling_autoload(dists, monkeypatch):
    dists.add("fake-good", "4.5.6", {"good": "good_plugin"}, good_plugin=GOOD)
    assert "echo" in loader.get_plugins().registry.names("attention")
    assert plugformer.compose(["attention=echo"]).attention.name == "echo"

    def attention_names(settings=None):
        return set(loader.get_plugins(settings).registry.names("attention"))

    settings = loader.PluginSettings
    builtins = {e.name for e in loader.get_plugins().registry.entries("attention")} - {"echo"}
    assert {"gqa", "mha"} <= builtins
    assert attention_names(settings(block=["good"])) == builtins
    assert attention_names(settings(block=["fake-good"])) == builtins
    assert attention_names(settings(autoload=False)) == builtins
    # a built-in can be blocked too, by its module name
    mha_blocked = attention_names(settings(block=["plugformer.plugins.attention.mha"]))
    assert mha_blocked == builtins - {"mha"} | {"echo"}
    with pytest.raises(plugformer.UnknownNameError) as info:
        plugformer.compose(["plugins.block=[good]", "attention=echo"])
    assert builtins <= set(info.value.valid) and "echo" not in info.value.valid

    monkeypatch.setenv(loader.ENV_BLOCK, "other, fake-good")
    assert attention_names() == builtins
    monkeypatch.delenv(loader.ENV_BLOCK)
    for off in ("1", "true", "yes"):
        monkeypatch.setenv(loader.ENV_DISABLE_AUTOLOAD, off)
        assert attention_names() == builtins
    monkeypatch.setenv(loader.ENV_DISABLE_AUTOLOAD, "0")
    assert attention_names() == builtins | {"echo"}


# -- plugformer.register: plugins from a user's script, late ones included ----------------------


@dataclass
class NaiveConfig(AttentionConfig):
    name: str = "naive"
    temperature: float = 1.0  # divides the scores; 1.0 is plain attention


class Naive:
    """Plain attention with KV heads repeated per query head, as a user might write it."""

    def __init__(self, config: NaiveConfig, dims) -> None:
        self.config, self.dims = config, dims

    def check(self) -> list[str]:
        return [] if self.config.temperature > 0 else ["attention.temperature must be > 0"]

    def __call__(self, q, k, v, bias):
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)  # [B, Hq, T, D]
        v = v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(-1, -2) * self.dims.scale / self.config.temperature + bias
        return torch.softmax(scores, dim=-1) @ v  # [B, Hq, S, D]


def naive_plugin() -> types.ModuleType:
    module = types.ModuleType("my_script_attention")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("attention", "naive", Naive, NaiveConfig)

    module.plugformer_register = plugformer_register
    return module


def test_late_register_reaches_loaded_managers_and_compose(clean):
    loaded = loader.get_plugins()  # start-up is over
    plugformer.compose([])
    assert "naive" not in loaded.registry.names("attention")

    plugin = naive_plugin()
    assert plugformer.register(plugin) == "my_script_attention"
    assert plugformer.register(plugin) == "my_script_attention"  # twice is a no-op
    # the historic hook ran for the manager that was already loaded
    assert loaded.registry.get("attention", "naive").source == Source(
        "local", "my_script_attention"
    )
    # ... and runs for managers made later (other block settings)
    assert "naive" in loader.get_plugins(loader.PluginSettings(block=["x"])).registry.names(
        "attention"
    )

    config = plugformer.compose(
        [TINY, "model.seed=5", "attention=naive", "attention.temperature=1"]
    )
    assert isinstance(config.attention, NaiveConfig)
    assert dataclasses.asdict(config.attention) == {"name": "naive", "temperature": 1.0}
    ids = torch.arange(1, 11).reshape(2, 5)
    naive = plugformer.Engine(config).logits(ids)
    gqa = plugformer.Engine.from_overrides([TINY, "model.seed=5", "attention=gqa"]).logits(ids)
    # fp32, the same weights: two attention formulas differ by rounding only
    torch.testing.assert_close(naive, gqa, rtol=1e-5, atol=1e-5)
    with pytest.raises(plugformer.RefusedError, match=r"attention\.temperature must be > 0"):
        plugformer.Engine.from_overrides([TINY, "attention=naive", "attention.temperature=0"])


class ScriptPlugin:
    """A plugin that is an object, not a module: its methods are the hook implementations."""

    @plugformer.hookimpl
    def plugformer_register(self, registry):
        registry.register("attention", "naive", Naive, NaiveConfig)


def test_register_an_object_before_loading(clean):
    plugformer.register(ScriptPlugin(), name="early")
    registry = loader.get_plugins().registry
    assert registry.get("attention", "naive").source == Source("local", "early")
    assert plugformer.compose(["plugins.block=[early]"]).plugins.block == ["early"]
    with pytest.raises(plugformer.UnknownNameError):
        plugformer.compose(["plugins.block=[early]", "attention=naive"])


def test_late_register_of_a_misspelled_hook_is_refused(clean):
    loaded = loader.get_plugins()
    module = types.ModuleType("typo_script")

    @plugformer.hookimpl
    def plugformer_registr(registry):
        pass

    module.plugformer_registr = plugformer_registr
    with pytest.raises(plugformer.PluginError, match="unknown hook 'plugformer_registr'"):
        plugformer.register(module)
    assert not loaded.manager.is_registered(module)
    assert loader._user_plugins == []


def test_late_register_of_a_duplicate_is_refused(clean):
    loader.get_plugins()
    module = types.ModuleType("dup_script")
    exec(textwrap.dedent(DUPLICATE), module.__dict__)
    with pytest.raises(plugformer.PluginError) as info:
        plugformer.register(module)
    assert str(info.value) == (
        "plugin 'dup_script' (local) failed to register: attention 'gqa' is already "
        "registered by plugformer.plugins.attention.gqa (builtin)"
    )
    assert loader._user_plugins == []


def test_failed_late_register_leaves_nothing_behind(clean):
    loaded = loader.get_plugins()
    module = types.ModuleType("dup_script")
    exec(textwrap.dedent(DUPLICATE), module.__dict__)
    with pytest.raises(plugformer.PluginError):
        plugformer.register(module)
    assert not loaded.manager.is_registered(module)


# -- unknown names ----------------------------------------------------------------------------


def test_unknown_names_suggest_and_list_the_valid_ones(clean, capsys):
    registry = loader.get_plugins().registry
    with pytest.raises(plugformer.UnknownNameError) as info:
        registry.get("attention", "gqaa")
    names = registry.names("attention")
    assert str(info.value) == (
        f"unknown attention 'gqaa'; did you mean 'gqa'? Valid names: {', '.join(names)}"
    )
    assert info.value.valid == names and {"gqa", "mha"} <= set(names)
    with pytest.raises(plugformer.UnknownNameError, match="did you mean 'attention'"):
        registry.get("atention", "gqa")
    with pytest.raises(plugformer.UnknownNameError) as info:
        plugformer.compose(["sampler=top-p"])
    assert "did you mean 'top_p'?" in str(info.value)
    assert set(info.value.valid) >= set(registry.names("sampler"))
    assert str(info.value).endswith(f"Valid names: {', '.join(info.value.valid)}")
    assert cli.main(["config", "positional=rop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plugformer: error: unknown positional 'rop'; did you mean 'rope'? ")
    assert err.endswith("\n") and err.count("\n") == 1
    listed = err.split("Valid names: ", 1)[1].strip().split(", ")
    assert set(listed) >= set(registry.names("positional"))


def test_registry_rules():
    registry = Registry()
    registry.register("attention", "a", print)
    with pytest.raises(DuplicateNameError, match="attention 'a' is already registered"):
        registry.register("attention", "a", print)
    registry.register("sampler", "a", print)  # names are per kind
    for bad in ("", "a.b", "a/b", "a=b"):
        with pytest.raises(plugformer.PlugformerError, match="invalid attention name"):
            registry.register("attention", bad, print)

    @dataclass
    class Misnamed(AttentionConfig):
        name: str = "other"

    with pytest.raises(plugformer.PlugformerError, match="defaults to 'other', expected 'b'"):
        registry.register("attention", "b", print, Misnamed)
    with pytest.raises(plugformer.PlugformerError, match="is not callable"):
        registry.register("attention", "c", None)
    with registry.source(Source("distribution", "p", "dist", "1")):
        entry = registry.register("attention", "naive", Naive, NaiveConfig)
    assert entry.source == Source("distribution", "p", "dist", "1")
    assert (
        entry.description
        == "Plain attention with KV heads repeated per query head, as a user might write it."
    )
    assert registry.register("attention", "e", print).source == Source("local", "<python>")
