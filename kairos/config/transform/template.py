"""The ``${variable}`` template language of transformation values.

A rule's ``value`` (and a string value of ``body.add``/``body.set``) may hold ``${client_ip}``,
``${request_id}``, ``${route}``, ``${path.<param>}``, ``${jwt.<claim>}`` and ``${env.<NAME>}``;
``$${`` is a literal ``${``. A template is split once, at load, into literal text and variables
(:class:`Template`); the middleware renders it per request with a lookup function. Rendered
header values lose their control characters (:func:`clean_header_value`), so a claim or a path
parameter can never add a header line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

VARIABLES = "${client_ip}, ${request_id}, ${route}, ${path.<param>}, ${jwt.<claim>}, ${env.<NAME>}"
_SIMPLE_VARIABLES = frozenset({"client_ip", "request_id", "route"})
# `$${` is a literal `${`; a variable runs to the next `}`.
_TEMPLATE_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
# Control characters a header value must never carry (tab is allowed), removed from rendered values.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Variable:
    kind: str  # client_ip | request_id | route | path | jwt
    arg: str = ""  # the path parameter or the claim name


Lookup = Callable[[Variable], str]


@dataclass(frozen=True, slots=True)
class Template:
    """A value with ``${variables}``, split once at load into literal text and variables."""

    parts: tuple[str | Variable, ...]
    constant: str | None  # the value itself when it uses no variable: nothing to do per request
    single: Variable | None = None  # the template is exactly one variable

    def render(self, lookup: Lookup) -> str:
        if self.constant is not None:
            return self.constant
        if self.single is not None:
            return lookup(self.single)
        return "".join([part if part.__class__ is str else lookup(part) for part in self.parts])  # type: ignore[arg-type]

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(part for part in self.parts if isinstance(part, Variable))


def parse_template(text: str, environ: Mapping[str, str] | None = None) -> Template:
    """Raise ValueError naming the first unknown variable. ``${env.NAME}`` is normally replaced by
    the loader already (with the other environment references); a model validated directly reads
    it from ``environ`` (the process environment by default)."""
    parts: list[str | Variable] = []
    literal: list[str] = []
    position = 0
    for match in _TEMPLATE_TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        name = match.group(1)
        if name is None:  # $${ -> ${
            literal.append("${")
            continue
        kind, dot, arg = name.partition(".")
        if not dot and kind in _SIMPLE_VARIABLES:
            variable = Variable(kind)
        elif dot and kind in ("path", "jwt") and arg:
            variable = Variable(kind, arg)
        elif dot and kind == "env" and arg:
            env = os.environ if environ is None else environ
            if arg not in env:
                raise ValueError(f"environment variable {arg} is not set")
            literal.append(env[arg])
            continue
        else:
            raise ValueError(f"unknown variable ${{{name}}}; use one of {VARIABLES}")
        if any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(variable)
    literal.append(text[position:])
    if any(literal):
        parts.append("".join(literal))
    if all(isinstance(part, str) for part in parts):
        return Template(tuple(parts), "".join(parts))  # type: ignore[arg-type]
    single = parts[0] if len(parts) == 1 and isinstance(parts[0], Variable) else None
    return Template(tuple(parts), None, single)


def clean_header_value(value: str) -> str:
    return _CONTROL.sub("", value) if _CONTROL.search(value) else value


def encode_header_value(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        # "replace": a lone surrogate (a JSON "\ud800" escape in a JWT claim or in the config) has
        # no UTF-8 form; strict encoding would fail the request (found by tests/fuzz).
        return value.encode("utf-8", "replace")
