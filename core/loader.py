"""Plugin loading: built-ins first, then entry points, then plugins registered from Python.

Environment variables:

* ``PLUGFORMER_DISABLE_PLUGIN_AUTOLOAD=1`` — do not load entry-point plugins (``1``, ``true``,
  ``yes``, any case; ``0``, ``false``, ``no`` or empty load them);
* ``PLUGFORMER_BLOCK_PLUGINS=a,b`` — block plugins: a comma-separated list (spaces around a
  name are ignored; no other separator), added to ``plugins.block`` from the config.

A blocked name is a plugin name (an entry point's name, a built-in's module name such as
``plugformer.plugins.attention.mha``, or the name given to :func:`register`), matched exactly,
or a distribution name, matched as PEP 503 normalises it (case-insensitive, runs of ``-``,
``_`` and ``.`` alike: ``My_Plugins`` blocks the distribution ``my-plugins``). A name that
matches none of them blocks nothing and is a :class:`UserWarning` naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from plugformer.core import hookspec as hookspec_module
from plugformer.core.errors import PlugformerError, PluginError
from plugformer.core.registry import BUILTIN, Registry, Source

ENTRY_POINT_GROUP = "plugformer.plugins"
ENV_DISABLE_AUTOLOAD = "PLUGFORMER_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCK = "PLUGFORMER_BLOCK_PLUGINS"

#: Built-in plugin modules, loaded first, in this order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugformer.plugins.attention.mha",
    "plugformer.plugins.attention.gqa",
    "plugformer.plugins.positional.rope",
    "plugformer.plugins.positional.alibi",
    "plugformer.plugins.positional.none",
    "plugformer.plugins.positional.rope_linear",
    "plugformer.plugins.positional.rope_dynamic",
    "plugformer.plugins.positional.rope_yarn",
    "plugformer.plugins.positional.rope_llama3",
    "plugformer.plugins.positional.learned",
    "plugformer.plugins.positional.sinusoidal",
    "plugformer.plugins.mlp.gated",
    "plugformer.plugins.mlp.plain",
    "plugformer.plugins.mlp.moe",
    "plugformer.plugins.norm.rmsnorm",
    "plugformer.plugins.norm.layernorm",
    "plugformer.plugins.sampling.greedy",
    "plugformer.plugins.sampling.temperature",
    "plugformer.plugins.sampling.top_k",
    "plugformer.plugins.sampling.top_p",
    "plugformer.plugins.sampling.min_p",
    "plugformer.plugins.sampling.typical_p",
    "plugformer.plugins.sampling.repetition_penalty",
    "plugformer.plugins.sampling.presence_penalty",
    "plugformer.plugins.sampling.frequency_penalty",
    "plugformer.plugins.sampling.logit_bias",
    "plugformer.plugins.sampling.no_repeat_ngram_size",
    "plugformer.plugins.parallel.single",
    "plugformer.plugins.parallel.tensor",
    "plugformer.plugins.parallel.pipeline",
    "plugformer.plugins.parallel.ddp",
    "plugformer.plugins.parallel.fsdp",
    "plugformer.plugins.quant.none",
    "plugformer.plugins.quant.rtn",
    "plugformer.plugins.quant.gptq",
    "plugformer.plugins.optim.adamw",
    "plugformer.plugins.optim.sgd",
    "plugformer.plugins.optim.cosine",
    "plugformer.plugins.optim.linear",
    "plugformer.plugins.optim.constant",
    "plugformer.plugins.adapters.lora",
    "plugformer.plugins.adapters.dora",
    "plugformer.plugins.models.llama",
    "plugformer.plugins.models.mistral",
    "plugformer.plugins.models.mixtral",
    "plugformer.plugins.models.qwen2",
    "plugformer.plugins.models.phi3",
    "plugformer.plugins.models.falcon",
    "plugformer.plugins.models.bloom",
    "plugformer.plugins.models.gpt2",
    "plugformer.plugins.models.gemma",
    "plugformer.plugins.models.plugformer",
    "plugformer.plugins.checkpoints.hf",
    "plugformer.plugins.checkpoints.gguf",
)


@dataclass
class PluginSettings:
    """The ``plugins`` section of the config."""

    block: list[str] = field(default_factory=list)  # plugin or distribution names
    autoload: bool = True  # load third-party entry points


@dataclass
class Plugins:
    """A loaded plugin manager and the registry its plugins filled."""

    manager: pluggy.PluginManager
    registry: Registry
    blocked: frozenset[str]
    loaded: list[tuple[str, Source]]  # (plugin name, source) in load order


_user_plugins: list[tuple[Any, str]] = []
_cache: dict[tuple[frozenset[str], bool], Plugins] = {}


def _env_block() -> set[str]:
    """The names of ``PLUGFORMER_BLOCK_PLUGINS``: comma-separated, spaces around them ignored."""
    return {n.strip() for n in os.environ.get(ENV_BLOCK, "").split(",") if n.strip()}


def normalize_distribution(name: str) -> str:
    """A distribution name as PEP 503 compares it: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _warn_unmatched(blocked: frozenset[str], eps: list[EntryPoint]) -> None:
    """Warn about each blocked name that matches no plugin and no distribution."""
    plugins = {*BUILTIN_PLUGINS, *(ep.name for ep in eps), *(n for _, n in _user_plugins)}
    dists = {dist.name for dist in (getattr(ep, "dist", None) for ep in eps) if dist is not None}
    normalized = {normalize_distribution(d) for d in dists}
    from_env = _env_block()
    for name in sorted(blocked):
        if name in plugins or normalize_distribution(name) in normalized:
            continue
        where = ENV_BLOCK if name in from_env else "plugins.block"
        msg = f"{where}: {name!r} matches no plugin or distribution, so it blocks nothing"
        pieces = [piece for piece in re.split(r"[\s;:|]+", name) if piece]
        close = difflib.get_close_matches(name, sorted(plugins | dists), n=1)
        if len(pieces) > 1:  # another separator than the comma
            msg += f"; separate names with commas: {','.join(pieces)}"
        elif close:
            msg += f"; did you mean {close[0]!r}?"
        warnings.warn(msg, UserWarning, stacklevel=3)


def _env_autoload() -> bool:
    return os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() in ("", "0", "false", "no")


def _one_line(text: object) -> str:
    """``text`` on one line: a plugin's exception (or pluggy's) may span several."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _register(plugins: Plugins, obj: Any, name: str, source: Source) -> None:
    try:
        with plugins.registry.source(source):
            plugins.manager.register(obj, name=name)
    except Exception as exc:  # a broken plugin: name it, never skip it
        if plugins.manager.get_name(obj) == name:  # pluggy keeps it when its hook raised
            plugins.manager.unregister(obj)
        if isinstance(exc, pluggy.PluginValidationError):
            what = f"is invalid: {_one_line(exc)}"
        elif isinstance(exc, PlugformerError):
            what = f"failed to register: {_one_line(exc)}"
        else:
            what = f"failed to register: {type(exc).__name__}: {_one_line(exc)}"
        raise PluginError(f"plugin {name!r} ({_describe(source)}) {what}") from exc
    plugins.loaded.append((name, source))


def _describe(source: Source) -> str:
    if source.origin == "distribution":
        return f"distribution {source.distribution} {source.version}"
    return source.origin


def _load_entry_point(ep: EntryPoint) -> tuple[Any, Source]:
    dist = getattr(ep, "dist", None)
    source = Source(
        "distribution",
        ep.name,
        dist.name if dist is not None else "<unknown>",
        dist.version if dist is not None else "?",
    )
    try:
        return ep.load(), source
    except Exception as exc:
        raise PluginError(
            f"plugin {ep.name!r} ({_describe(source)}) failed to import: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def load_plugins(block: Iterable[str] = (), autoload: bool = True) -> Plugins:
    """A fresh plugin manager with built-ins, entry points (unless ``autoload`` is off or the
    environment disables it) and plugins registered with :func:`register`, minus blocked ones."""
    blocked = frozenset(block) | _env_block()
    autoload = autoload and _env_autoload()
    manager = pluggy.PluginManager(hookspec_module.PROJECT_NAME)
    manager.add_hookspecs(hookspec_module)
    registry = Registry()
    registry.blocked = blocked
    plugins = Plugins(manager, registry, blocked, [])
    for name in blocked:
        manager.set_blocked(name)
    # historic: every plugin registered from now on is called with this registry at once
    manager.hook.plugformer_register.call_historic(kwargs={"registry": registry})

    for module_name in BUILTIN_PLUGINS:
        if module_name in blocked:
            continue
        _register(
            plugins,
            importlib.import_module(module_name),
            module_name,
            dataclasses.replace(BUILTIN, plugin=module_name),
        )

    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    blocked_dists = {normalize_distribution(name) for name in blocked}
    if autoload:
        for ep in eps:
            dist = getattr(ep, "dist", None)
            if ep.name in blocked or (
                dist is not None and normalize_distribution(dist.name) in blocked_dists
            ):
                continue
            obj, source = _load_entry_point(ep)
            _register(plugins, obj, ep.name, source)

    for obj, name in _user_plugins:
        if name not in blocked:
            _register(plugins, obj, name, Source("local", name))

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = manager.get_name(exc.plugin) or repr(exc.plugin)
        found = dict(plugins.loaded).get(plugin)
        raise PluginError(_unknown_hooks_message(manager, exc, plugin, found)) from exc
    _warn_unmatched(blocked, eps)
    return plugins


def _unknown_hooks_message(
    manager: pluggy.PluginManager,
    exc: pluggy.PluginValidationError,
    plugin: str,
    source: Source | None,
) -> str:
    """One line for :meth:`pluggy.PluginManager.check_pending`'s error: the plugin, every hook
    it implements that has no spec, and the closest real hook name for each (or the list)."""
    specs, unknown = [], []
    for hook, caller in vars(manager.hook).items():  # as pluggy's check_pending walks them
        if hook.startswith("_"):
            continue
        if caller.has_spec():
            specs.append(hook)
        elif any(i.plugin is exc.plugin and not i.optionalhook for i in caller.get_hookimpls()):
            unknown.append(hook)
    if not unknown:  # pluggy found something this walk does not: its own words, once
        return f"plugin {plugin!r}{_where(source)} is invalid: {_one_line(exc)}"
    specs.sort()
    unknown.sort()
    close = {h: _close_hook(h, specs) for h in unknown}
    if len(unknown) == 1:
        (hook,) = unknown
        text = f"implements an unknown hook {hook!r}"
        text += f"; did you mean {close[hook][0]!r}?" if close[hook] else "."
    else:
        named = [f"{h!r} (did you mean {close[h][0]!r}?)" if close[h] else repr(h) for h in unknown]
        text = f"implements unknown hooks {', '.join(named[:-1])} and {named[-1]}."
    if not all(close.values()):
        text += f" The hooks are: {', '.join(specs)}"
    return f"plugin {plugin!r}{_where(source)} {text}"


def _close_hook(hook: str, specs: list[str]) -> list[str]:
    """The hook spec closest to ``hook`` (``[]`` if none is close), compared without the shared
    ``plugformer_`` prefix, which would make every name look alike."""
    prefix = f"{hookspec_module.PROJECT_NAME}_"
    bare = {spec.removeprefix(prefix): spec for spec in specs}
    close = difflib.get_close_matches(hook.removeprefix(prefix), list(bare), n=1)
    return [bare[close[0]]] if close else []


def _where(source: Source | None) -> str:
    return f" ({_describe(source)})" if source is not None else ""


def get_plugins(settings: PluginSettings | None = None) -> Plugins:
    """The shared, cached plugin manager for these settings (loaded on first use)."""
    settings = settings or PluginSettings()
    key = (frozenset(settings.block) | _env_block(), settings.autoload and _env_autoload())
    if key not in _cache:
        _cache[key] = load_plugins(key[0], key[1])
    return _cache[key]


def register(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object (a module or any object with ``@hookimpl`` functions) from
    Python; it joins every loaded and every future plugin manager. Returns its name."""
    name = name or getattr(plugin, "__name__", None) or f"local-{id(plugin):x}"
    if any(existing is plugin for existing, _ in _user_plugins):
        return name
    source = Source("local", name)
    done: list[Plugins] = []
    try:
        for loaded in _cache.values():
            if name not in loaded.blocked:
                _register(loaded, plugin, name, source)
                done.append(loaded)
                try:
                    loaded.manager.check_pending()
                except pluggy.PluginValidationError as exc:  # worded while still registered
                    message = _unknown_hooks_message(loaded.manager, exc, name, source)
                    raise PluginError(message) from exc
    except PluginError:
        for loaded in done:  # all or nothing: no manager keeps a plugin that failed
            loaded.manager.unregister(plugin)
            loaded.loaded.remove((name, source))
        raise
    _user_plugins.append((plugin, name))
    return name


def reset() -> None:
    """Forget plugins registered from Python and every cached plugin manager (for tests)."""
    _user_plugins.clear()
    _cache.clear()
