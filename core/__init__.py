"""plugformer's core: the plugin contract, registries, configs, the generic decoder and the engine.

The core never imports a plugin module; it asks the registry.
"""

from plugformer.core.hookspec import hookimpl

#: Version of the plugin contract (hook names and signatures, registry kinds, interfaces).
#: Bump it with any change that ``tests/test_contract_surface.py`` catches.
#: 1.1: registry kinds ``mlp`` and ``norm`` (interfaces in ``core/mlp.py``, ``core/norm.py``);
#: optional ``ModelFamily.tensor_parts`` and ``Attention.window``.
CONTRACT_VERSION = "1.2"

__all__ = ["CONTRACT_VERSION", "hookimpl"]
