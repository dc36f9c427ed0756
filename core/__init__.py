"""plugformer's core: the plugin contract, registries, configs, the generic decoder and the engine.

The contract a plugin author reads is :mod:`plugformer.core.hookspec` (the hooks) and
:mod:`plugformer.core.interfaces` (one module per registry kind); every interface name and
``hookimpl`` are re-exported here, so a plugin imports from ``plugformer.core`` alone. The core
never imports a plugin module; it asks the registry.

The interface names load on first use (PEP 562), so that ``import plugformer.core`` (and with it
``plugformer --help``) does not import torch.
"""

import importlib
from typing import Any

from plugformer.core import compat
from plugformer.core.hookspec import hookimpl as hookimpl

#: Version of the plugin contract (hook names and signatures, registry kinds, interfaces).
#: Bump it with any change that ``tests/surface/test_contract_surface.py`` catches; see
#: CHANGELOG.md. 2.0: interfaces in ``core/interfaces/`` re-exported here, optional
#: capabilities declared on the interfaces; the 1.x module paths warn (gone in 3.0). 2.1: the
#: ``adapter`` kind.
CONTRACT_VERSION = "2.1"

compat.install()


def __getattr__(name: str) -> Any:
    # import_module, not ``from plugformer.core import``: the latter asks this hook again
    interfaces = importlib.import_module("plugformer.core.interfaces")
    if name == "__all__":
        return ["CONTRACT_VERSION", "hookimpl", *interfaces.__all__]
    if name in interfaces.__all__:
        value = getattr(interfaces, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'plugformer.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
