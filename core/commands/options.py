"""Command options that are not config keys: ``key=value`` arguments a command takes for itself.

``plugformer quantize`` takes ``output_dir`` and ``checkpoint_format``, ``plugformer eval``
takes ``data``, ``window`` and ``stride``; everything else on those command lines is a Hydra
override.
"""

from __future__ import annotations

from plugformer.core.errors import ConfigError


def take_options(args: list[str], keys: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments for ``keys`` from the Hydra overrides."""
    options: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in keys:
            if key in options:
                raise ConfigError(f"{key}: given twice")
            options[key] = value
        else:
            rest.append(arg)
    return options, rest


def positive_int(options: dict[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: expected a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value}")
    return value
