"""Registries: one per kind of component, filled by plugins through ``plugformer_register``.

A registry entry is a name, a builder (a class or function that makes the runtime object from
its config and context), the config dataclass stored in Hydra's ConfigStore, and the entry's
source (built-in, a third-party distribution with its version, or a user's script).
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from plugformer.core.errors import (
    ConfigError,
    DuplicateKnobError,
    DuplicateNameError,
    PlugformerError,
    RefusedError,
    UnknownNameError,
)
from plugformer.core.interfaces.adapter import AdapterConfig
from plugformer.core.interfaces.attention import AttentionConfig
from plugformer.core.interfaces.checkpoint import CheckpointConfig
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.interfaces.mlp import MLPConfig
from plugformer.core.interfaces.norm import NormConfig
from plugformer.core.interfaces.optimizer import OptimizerConfig
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.positional import PositionalConfig
from plugformer.core.interfaces.quant import QuantConfig
from plugformer.core.interfaces.sampler import SamplerConfig, neutral_value
from plugformer.core.interfaces.schedule import ScheduleConfig

#: Every registry kind and the config base class its entries' configs derive from.
KINDS: dict[str, type] = {
    "attention": AttentionConfig,
    "positional": PositionalConfig,
    "mlp": MLPConfig,
    "norm": NormConfig,
    "sampler": SamplerConfig,
    "parallel": ParallelConfig,
    "quant": QuantConfig,
    "family": FamilyConfig,
    "checkpoint": CheckpointConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "adapter": AdapterConfig,
}


@dataclass(frozen=True)
class Source:
    """Where a registry entry came from."""

    origin: str  # "builtin" | "distribution" | "local"
    plugin: str  # plugin name in the plugin manager (module or entry-point name)
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.origin == "distribution":
            return f"{self.distribution} {self.version}"
        return self.origin


BUILTIN = Source("builtin", "plugformer")


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    builder: Callable[..., Any]
    config: type
    source: Source
    description: str


def _type_name(tp: Any) -> str:
    """A knob's type as written (``float``, ``list[int]``), the same for a resolved annotation
    and an unresolved string one."""
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def knob_declarations(config: type) -> dict[str, tuple[str, Any]]:
    """A sampler config's knobs (every field but ``name``): name -> (type, neutral value)."""
    try:
        hints = typing.get_type_hints(config)
    except Exception:  # an annotation naming something not importable here: compare as written
        hints = {}
    return {
        f.name: (_type_name(hints.get(f.name, f.type)), neutral_value(f))
        for f in dataclasses.fields(config)
        if f.name != "name"
    }


class Registry:
    """All registries, by kind.

    Plugins call :meth:`register`; the core calls :meth:`get` and :meth:`build`.
    """

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._source: Source = Source("local", "<python>")
        self._listeners: list[Callable[[Entry], None]] = []
        #: the plugin names blocked when this registry was filled (set by the loader), so that
        #: an unknown name says it may be blocked rather than missing
        self.blocked: frozenset[str] = frozenset()

    # -- used by plugins -------------------------------------------------------------------
    def register(
        self, kind: str, name: str, builder: Callable[..., Any], config: type | None = None
    ) -> Entry:
        """Add ``name`` to the registry of ``kind``.

        :param kind: one of :data:`KINDS`.
        :param name: the name users select (``attention=<name>``); lower case, no dots.
        :param builder: makes the runtime object: ``builder(config, *context)``; see the
            interface module of the kind for the context arguments.
        :param config: a dataclass deriving from the kind's base config, whose ``name``
            defaults to ``name``. Default: the base config itself.

        A name already taken in ``kind`` is a :class:`DuplicateNameError`; a sampler knob that
        a registered sampler declares with another type or neutral value is a
        :class:`DuplicateKnobError` (see :mod:`plugformer.core.interfaces.sampler`).
        """
        if kind not in self._entries:
            raise UnknownNameError("registry kind", kind, KINDS)
        if not isinstance(name, str) or not name or "." in name or "/" in name or "=" in name:
            raise PlugformerError(f"invalid {kind} name {name!r}: a non-empty name without . / =")
        base = KINDS[kind]
        config = config or base
        if not (dataclasses.is_dataclass(config) and isinstance(config, type)) or not issubclass(
            config, base
        ):
            raise PlugformerError(
                f"{kind} {name!r}: config must be a dataclass deriving from {base.__name__}"
            )
        default_name = next(f.default for f in dataclasses.fields(config) if f.name == "name")
        if config is not base and default_name != name:
            raise PlugformerError(
                f"{kind} {name!r}: {config.__name__}.name defaults to {default_name!r}, "
                f"expected {name!r}"
            )
        if not callable(builder):
            raise PlugformerError(f"{kind} {name!r}: builder {builder!r} is not callable")
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise DuplicateNameError(
                f"{kind} {name!r} is already registered by {existing.source.plugin} "
                f"({existing.source})"
            )
        if kind == "sampler":
            self._check_knobs(name, config)
        doc = (getattr(builder, "__doc__", None) or "").strip().splitlines()
        entry = Entry(kind, name, builder, config, self._source, doc[0] if doc else "")
        self._entries[kind][name] = entry
        for listener in self._listeners:
            listener(entry)
        return entry

    def _check_knobs(self, name: str, config: type) -> None:
        """Refuse a sampler knob that a registered sampler declares with another type or
        neutral value; an identical redeclaration shares the knob."""
        mine = knob_declarations(config)
        for other in self._entries["sampler"].values():
            for knob, (tp, off) in knob_declarations(other.config).items():
                if knob not in mine or mine[knob] == (tp, off):
                    continue
                my_tp, my_off = mine[knob]
                raise DuplicateKnobError(
                    knob,
                    name,
                    other.name,
                    f"sampler {name!r} of {self._source.plugin} ({self._source}) declares knob "
                    f"{knob!r} as {my_tp} (neutral {my_off!r}), but sampler {other.name!r} of "
                    f"{other.source.plugin} ({other.source}) already declares it as {tp} "
                    f"(neutral {off!r}); samplers share a knob only with the same type and "
                    "neutral value: rename one",
                )

    # -- used by the core -----------------------------------------------------------------
    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; an unknown name lists the valid ones with a suggestion."""
        if kind not in self._entries:
            raise UnknownNameError("registry kind", kind, KINDS)
        try:
            return self._entries[kind][name]
        except KeyError:
            raise self.unknown(kind, name) from None

    def unknown(self, kind: str, name: str, valid: Iterable[str] | None = None) -> UnknownNameError:
        """The error for a name ``kind`` does not have, saying which blocked plugin it may be in
        (``plugins.block``/``PLUGFORMER_BLOCK_PLUGINS``): the one whose last dotted part is
        ``name`` (a built-in's module), or all of them."""
        valid = self._entries[kind] if valid is None else valid
        exact = sorted(b for b in self.blocked if b.rsplit(".", 1)[-1] == name)
        if exact:
            note = f"blocked by plugins.block: {', '.join(exact)}"
        elif self.blocked:
            names = ", ".join(sorted(self.blocked))
            note = f"a blocked plugin may provide it; plugins.block: {names}"
        else:
            note = None
        return UnknownNameError(kind, name, valid, note=note)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(self._entries)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def build(self, kind: str, config: Any, *context: Any) -> Any:
        """Build the runtime object for ``config`` (its ``name`` picks the entry) and ask it
        whether it can run; raise :class:`RefusedError` with its reasons when it cannot."""
        entry = self.get(kind, config.name)
        if not isinstance(config, entry.config):
            raise ConfigError(
                f"{kind}: config for {config.name!r} must be a {entry.config.__name__}, "
                f"got {type(config).__name__}"
            )
        obj = entry.builder(config, *context)
        reasons = list(obj.check())
        if reasons:
            raise RefusedError(kind, entry.name, reasons)
        return obj

    def add_listener(self, listener: Callable[[Entry], None]) -> None:
        """Call ``listener(entry)`` for every entry registered from now on."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def source(self, source: Source) -> Iterator[None]:
        """Attribute entries registered inside the block to ``source``."""
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous
