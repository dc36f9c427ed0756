"""plugformer's core: the plugin contract, registries, configs, the generic decoder and the engine.

The contract a plugin author reads is :mod:`plugformer.core.hookspec` (the hooks) and
:mod:`plugformer.core.interfaces` (one module per registry kind); every interface name and
``hookimpl`` are re-exported here, so a plugin imports from ``plugformer.core`` alone. The core
never imports a plugin module; it asks the registry.
"""

from plugformer.core import compat
from plugformer.core.hookspec import hookimpl
from plugformer.core.interfaces import *  # noqa: F403
from plugformer.core.interfaces import __all__ as _interfaces

#: Version of the plugin contract (hook names and signatures, registry kinds, interfaces).
#: Bump it with any change that ``tests/surface/test_contract_surface.py`` catches; see
#: CHANGELOG.md. 2.0: interfaces in ``core/interfaces/`` re-exported here, optional
#: capabilities declared on the interfaces; the 1.x module paths warn (gone in 3.0).
CONTRACT_VERSION = "2.0"

compat.install()

__all__ = ["CONTRACT_VERSION", "hookimpl", *_interfaces]
