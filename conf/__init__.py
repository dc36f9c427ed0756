"""Hydra config files shipped with plugformer (values only; options come from the registry)."""
