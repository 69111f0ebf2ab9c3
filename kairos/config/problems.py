"""Config diagnostics: every problem carries the JSON path of the value it is about.

Operators fix configs from these lines, so each one names the path (``routers[0].backends[0].port``),
says what is wrong in plain words and quotes the offending value. Errors and warnings share one
shape; errors stop a load, warnings are printed and the config is used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

_MISSING = object()
SECRET_KEYS = frozenset({"secret", "api_key", "keys", "password", "token", "jwt_secret"})


def format_path(loc: Iterable[str | int]) -> str:
    """``("routers", 0, "port")`` -> ``routers[0].port``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(root)"


def describe_value(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str
    value: Any = _MISSING

    def __str__(self) -> str:
        if self.value is _MISSING:
            return f"{self.path}: {self.message}"
        return f"{self.path}: {self.message} (got {describe_value(self.value)})"


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` lists every error found, not just the first."""

    def __init__(self, problems: Sequence[Problem], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} error(s)\n{lines}")


# pydantic error types -> the wording an operator reads. Value errors raised by our own validators
# already carry a message meant for people; only the "Value error, " prefix is dropped.
_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "frozen_instance": "cannot be changed",
}


def problems_from_validation_error(
    error: ValidationError, prefix: Sequence[str | int] = ()
) -> list[Problem]:
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if not _is_union_tag(part)]
        path = format_path([*prefix, *loc])
        kind = item["type"]
        if kind == "missing":
            problems.append(Problem(path, "is required"))
            continue
        if kind == "value_error":
            message = str(item.get("ctx", {}).get("error", item["msg"]))
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            message = _bound_message(kind, item.get("ctx", {}))
        elif kind == "literal_error":
            message = "must be one of " + str(item.get("ctx", {}).get("expected", ""))
        else:
            message = _MESSAGES.get(kind, item["msg"][:1].lower() + item["msg"][1:])
        value = item.get("input")
        if loc and str(loc[-1]) in SECRET_KEYS or len(loc) > 1 and str(loc[-2]) in SECRET_KEYS:
            problems.append(Problem(path, message))  # never echo a secret into logs or terminals
            continue
        # An error about a whole object (a cross-field rule) reads better without the object dumped.
        problems.append(Problem(path, message) if isinstance(value, dict) else Problem(path, message, value))
    return problems


def _bound_message(kind: str, ctx: dict[str, Any]) -> str:
    words = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("greater than", "gt"),
        "less_than": ("less than", "lt"),
    }
    word, key = words[kind]
    return f"must be {word} {ctx.get(key)}"


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the union member / function name to the location (e.g. "function-after[...]",
    # "int", "str"); they mean nothing to someone editing config.json.
    return isinstance(part, str) and (
        "[" in part or part in ("int", "str", "bool", "float", "list[str]", "dict[str,any]")
    )
