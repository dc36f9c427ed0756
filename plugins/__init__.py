"""Built-in plugins. Each module is one plugin, named like its registry name; a plugin imports
``torch`` and ``plugformer.core`` only."""
