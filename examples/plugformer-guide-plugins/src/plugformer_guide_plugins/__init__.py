"""The plugin-author guide's plugins (docs/plugins.md): one worked example per registry kind.

The entry point ``guide`` in ``pyproject.toml`` points at this package, so plugformer registers
this module as one plugin, and its ``plugformer_register`` registers every component. Each
component module is a plugin on its own as well (one module per component, named like its
registry name), so a script can take just one: ``plugformer.register(relu2)``.
"""

from plugformer.core import hookimpl
from plugformer_guide_plugins import (
    guide_dir,
    ia3,
    int8_rows,
    lion,
    relu2,
    scaled_sinusoidal,
    scalenorm,
    sigmoid,
    threads,
    tinyllama_guide,
    top_a,
    wsd,
)

__version__ = "0.1.0"

COMPONENTS = (
    sigmoid,
    scaled_sinusoidal,
    relu2,
    scalenorm,
    top_a,
    int8_rows,
    tinyllama_guide,
    guide_dir,
    threads,
    lion,
    wsd,
    ia3,
)


@hookimpl
def plugformer_register(registry):
    for component in COMPONENTS:
        component.plugformer_register(registry)
