"""An example third-party plugformer plugin: attention ``softcap`` and sampler ``eta``.

The entry point ``example`` in ``pyproject.toml`` points at this package, so plugformer
registers this module as one plugin; its ``plugformer_register`` registers every component.
Each component module is also a plugin on its own (one module per plugin, named like its
registry name), so a script can use just one: ``plugformer.register(softcap)``.
"""

from plugformer.core import hookimpl
from plugformer_example_plugin import eta, softcap

__version__ = "0.1.0"


@hookimpl
def plugformer_register(registry):
    softcap.plugformer_register(registry)
    eta.plugformer_register(registry)
