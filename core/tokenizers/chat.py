"""Chat templates: a model's Jinja template rendered in a sandbox, as transformers renders it.

A chat template comes with the model's files, so it is untrusted code. It runs in Jinja's
``ImmutableSandboxedEnvironment`` (no unsafe attributes, no mutation of the messages), and here
any attempt to reach an unsafe attribute fails at once instead of rendering as an empty string;
``*`` and ``**`` are capped so a template cannot build a huge string or number, and the output
is cut off past :data:`MAX_OUTPUT_CHARS`. Every failure is one :class:`ChatTemplateError` line.

The environment matches transformers' ``apply_chat_template``: ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that keeps non-ASCII
text, and the globals ``raise_exception``, ``strftime_now`` and ``namespace``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from plugformer.core.errors import ValidationError

#: Rendered text longer than this is refused (a runaway loop, not a conversation).
MAX_OUTPUT_CHARS = 10_000_000
_MAX_REPEAT = 1_000_000  # longest string/list a template may build with ``*``
_MAX_POWER = 10_000  # largest exponent a template may use with ``**``


class ChatTemplateError(ValidationError):
    """A chat template failed to parse or render, called ``raise_exception`` or broke the
    sandbox's rules; the message says which, in one line."""


class _Raised(Exception):
    """``raise_exception(message)`` called by a template."""


def _raise_exception(message: Any) -> None:
    raise _Raised(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 1


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses underscore names (no reaching interpreter internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"namespace attribute {name!r} starts with an underscore")

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            # Jinja would return an Undefined that renders as "" until used further
            raise SecurityError(
                f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
            )

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                count = right if isinstance(left, str | list | tuple) else left
                item = left if isinstance(left, str | list | tuple) else right
                if isinstance(count, int) and _size(item) * count > _MAX_REPEAT:
                    raise SecurityError(f"'*' would build more than {_MAX_REPEAT} items")
            elif isinstance(right, int | float) and abs(right) > _MAX_POWER:
                raise SecurityError(f"'**' with an exponent above {_MAX_POWER}")
            return super().call_binop(context, operator, left, right)

    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = Namespace
    return env.from_string(template)


def _plain(value: Any, where: str) -> Any:
    """A copy of ``value`` made of plain JSON-like types only (what a template may see)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    for kind in (str, bool, int, float):  # subclasses (enums, numpy scalars) lose their methods
        if isinstance(value, kind):
            return kind(value)
    raise ValidationError(
        f"{where}: a chat template can only see plain data (str, numbers, lists, dicts), "
        f"not {type(value).__name__}"
    )


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise ValidationError(f"messages: expected a list of dicts, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValidationError(f"messages[{i}]: expected a dict, got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValidationError(f"messages[{i}]: missing {key!r}")
            if not isinstance(message[key], str):
                raise ValidationError(
                    f"messages[{i}][{key!r}]: expected str, got {type(message[key]).__name__}"
                )
    return [_plain(m, f"messages[{i}]") for i, m in enumerate(messages)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_chat(
    template: str, messages: list[dict], add_generation_prompt: bool = True, **extra: Any
) -> str:
    """Render ``messages`` (dicts with str ``role`` and ``content``) with a chat template.

    ``extra`` goes to the template as variables: ``bos_token``, ``eos_token``, ``tools`` ...
    (plain data only). Raises :class:`ChatTemplateError` (a ``ValidationError``) when the
    template does not parse, fails, calls ``raise_exception`` or breaks the sandbox's rules, and
    ``ValidationError`` for malformed messages.
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    if not isinstance(template, str):
        raise ValidationError(f"chat template: expected str, got {type(template).__name__}")
    plain_messages = _check_messages(messages)
    variables = {k: _plain(v, k) for k, v in extra.items()}
    variables["messages"] = plain_messages
    variables["add_generation_prompt"] = bool(add_generation_prompt)
    try:
        compiled = _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"chat template: syntax error at line {exc.lineno}: {_one_line(exc.message or '')}"
        ) from None
    parts: list[str] = []
    size = 0
    try:
        for chunk in compiled.generate(**variables):
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise ChatTemplateError(
                    f"chat template: output longer than {MAX_OUTPUT_CHARS} characters"
                )
    except _Raised as exc:
        raise ChatTemplateError(f"chat template raised an error: {_one_line(str(exc))}") from None
    except SecurityError as exc:
        raise ChatTemplateError(
            f"chat template blocked by the sandbox: {_one_line(str(exc))}"
        ) from None
    except ChatTemplateError:
        raise
    except (
        jinja2.TemplateError,
        ArithmeticError,
        TypeError,
        ValueError,
        LookupError,
        RecursionError,
    ) as exc:
        raise ChatTemplateError(
            f"chat template failed: {type(exc).__name__}: {_one_line(str(exc))}"
        ) from None
    return "".join(parts)
