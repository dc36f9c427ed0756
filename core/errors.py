"""Typed errors: every error a user can cause is a one-line :class:`PlugformerError`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlugformerError(Exception):
    """Base class of every error plugformer raises on purpose (bad input, refused plugin, ...)."""

    exit_code = 1


class ConfigError(PlugformerError, ValueError):
    """A configuration value, key or override is wrong; the message names the full key."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """A name was looked up in a registry (or another closed set) and is not there."""

    def __init__(self, what: str, name: str, valid: Iterable[str], note: str | None = None) -> None:
        self.what = what
        self.name = name
        self.valid = sorted(valid)
        msg = f"unknown {what} {name!r}" + (f" ({note})" if note else "")
        close = difflib.get_close_matches(name, self.valid, n=1) if isinstance(name, str) else []
        # "...; did you mean 'x'? Valid names: a, b" or "unknown ... 'y'. Valid names: a, b":
        # a sentence ends before the list either way; the list itself is comma-separated, last
        # (callers split it on ", ", so no closing period)
        msg += f"; did you mean {close[0]!r}?" if close else "."
        msg += f" Valid names: {', '.join(self.valid) if self.valid else '(none registered)'}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0])


class DuplicateNameError(PlugformerError, ValueError):
    """A plugin tried to register a name that is already taken in that registry."""


class DuplicateKnobError(DuplicateNameError):
    """A sampler declares a knob (a config field) that another registered sampler already
    declares with a different type or neutral value; the message names both samplers, their
    plugins and the knob (see :mod:`plugformer.core.interfaces.sampler` for the rule)."""

    def __init__(self, knob: str, sampler: str, other: str, message: str) -> None:
        self.knob = knob
        self.sampler = sampler  # the sampler being registered
        self.other = other  # the registered sampler that declared the knob first
        super().__init__(message)


class PluginError(PlugformerError):
    """A plugin failed to load or to register; the message names the plugin and its distribution."""


class RefusedError(PlugformerError):
    """A plugin cannot run with the given configuration; the message lists its reasons."""

    def __init__(self, kind: str, name: str, reasons: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.reasons = list(reasons)
        super().__init__(f"{kind} {name!r} refused: " + "; ".join(self.reasons))


class ValidationError(PlugformerError, ValueError):
    """A runtime argument (a prompt, a token id, a sampling parameter) is out of range."""

    exit_code = 2


class SamplerRefusedError(RefusedError, ValidationError):
    """A sampler refused its knob values (its ``check()`` reasons): ``sampler 'x' refused: ...``,
    the form of every other kind's refusal, and a :class:`ValidationError` (exit code 2), since
    the knobs are sampling parameters a user or a request set."""

    def __init__(self, name: str, reasons: list[str]) -> None:
        super().__init__("sampler", name, reasons)


class CheckpointError(PlugformerError, ValueError):
    """A checkpoint file or directory is malformed or disagrees with its config."""
