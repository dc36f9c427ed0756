"""The whole plugin contract of plugformer: every hook a plugin may implement.

A plugin is any Python object (usually a module) with module-level functions decorated with
``@plugformer.hookimpl`` whose names are hooks listed here. Plugins reach plugformer three ways:

* built-in plugins: the modules listed in :data:`plugformer.core.plugins.BUILTIN_PLUGINS`,
  loaded first;
* third-party packages: an entry point in the group ``plugformer.plugins``
  (``[project.entry-points."plugformer.plugins"] my_name = "my_package.plugin"``);
* the Python API: ``plugformer.register(obj)`` for plugins defined in a user's own script.

After loading, ``PluginManager.check_pending()`` runs, so a function named like a hook that does
not exist here (a misspelling) is an error, never silently ignored.

Changing a hook name or signature here changes the contract: bump
:data:`plugformer.core.CONTRACT_VERSION` and update ``tests/surface/test_contract_surface.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from plugformer.core.registry import Registry

PROJECT_NAME = "plugformer"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(historic=True)
def plugformer_register(registry: Registry) -> None:
    """Register this plugin's components (attention kernels, samplers, model families ...).

    Called once per plugin, when the plugin is registered with the plugin manager. The hook
    is *historic*: a plugin registered late (``plugformer.register(obj)`` after start-up) is
    still called, with the same registry every earlier plugin saw.

    :param registry: the :class:`~plugformer.core.registry.Registry` to add entries to, with
        ``registry.register(kind, name, builder, config)``; ``kind`` is one of
        :data:`~plugformer.core.registry.KINDS`. Registering a name twice in one kind raises
        :class:`~plugformer.core.errors.DuplicateNameError`, which stops start-up with the
        plugin's name and distribution.

    Return value: ignored (not ``firstresult``; every plugin's implementation is called).
    """


@hookspec
def plugformer_engine_ready(engine: Any) -> None:
    """Observe an :class:`~plugformer.Engine` after it has been fully built.

    Called once per engine, after the model, tokenizer, parallel strategy and quantizer are in
    place and before the first forward pass. Use it for instrumentation (forward hooks,
    logging); a plugin must not replace the engine's parts here, it registers components
    instead.

    :param engine: the :class:`plugformer.Engine` that was built.

    Return value: ignored (not ``firstresult``; every plugin's implementation is called).
    """


@hookspec
def plugformer_generation_done(engine: Any, results: list[Any]) -> None:
    """Observe the results of one ``engine.generate`` (or ``chat``) call or ``engine.stream``.

    Called once per ``generate`` call, after every sequence has stopped and before the results
    are returned to the caller; once per ``stream``, after its last delta was yielded (a stream
    the caller abandons early does not call it).

    :param engine: the :class:`plugformer.Engine` that generated.
    :param results: the :class:`~plugformer.core.engine.Generation` objects, one per prompt,
        in prompt order. Treat them as read-only.

    Return value: ignored (not ``firstresult``; every plugin's implementation is called).
    """
