"""Optional capabilities: attributes a plugin object may set, declared with their defaults.

Every optional attribute the core reads from a plugin object is declared in its kind's interface
module as a :class:`Capability` in that module's ``CAPABILITIES`` table (name -> default and
meaning), and read only through :func:`capability`, which refuses a name the table does not
declare. A plugin opts in by setting the attribute (``self.softmax_attention = True``, or a
method of that name); leaving it unset means the declared default. The tables are frozen by
the contract surface test, like the hooks and the protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Capability:
    """One optional attribute of a plugin object."""

    default: Any  # the value when the plugin does not set the attribute
    meaning: str  # its type and what the core does with it


def capability(obj: object, declared: dict[str, Capability], name: str) -> Any:
    """``obj.<name>`` when the plugin object sets it, else the default ``declared`` gives.

    :raises KeyError: ``name`` is not declared (a core bug: every capability is declared).
    """
    default = declared[name].default
    return getattr(obj, name, default)
