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

from kairos.config.base import ConfigModel
from kairos.config.storage_uri import redacted

_MISSING = object()
SECRET_KEYS = frozenset({"secret", "api_key", "api_keys", "keys", "password", "token", "jwt_secret"})


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
    """The offending value as an operator reads it: JSON, cut at 80 characters, and a URL's
    credentials (``redis://:password@host``) masked, as the value goes to logs and terminals."""
    if isinstance(value, str) and "://" in value:
        value = redacted(value)
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
    """A config that cannot be used; ``problems`` lists every error found, not just the first.

    ``warnings`` carries what was noticed on the way (unknown keys, shadowed routes), so a tool
    can show an operator everything about the file in one run."""

    def __init__(
        self, problems: Sequence[Problem], source: str = "config", warnings: Sequence[Problem] = ()
    ) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
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
    "tuple_type": "must be an array",
    "set_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "frozen_instance": "cannot be changed",
}


def problems_from_validation_error(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[Problem]:
    problems: list[Problem] = []
    items = _one_branch_per_union(error.errors(include_url=False))
    parents = {tuple(item["loc"][:cut]) for item in items for cut in range(len(item["loc"]))}
    for item in items:
        loc = [part for part in item["loc"] if not is_union_tag(part)]
        path = format_path([*prefix, *loc])
        kind = item["type"]
        if kind == "too_short" and tuple(item["loc"]) in parents:
            continue  # pydantic counts only the valid items: ["FOO"] is bad, not empty
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
        if any(str(part) in SECRET_KEYS for part in loc[-2:]):
            problems.append(Problem(path, message))  # never echo a secret into logs or terminals
            continue
        # An error about a whole object (a cross-field rule) reads better without the object dumped.
        problems.append(Problem(path, message) if isinstance(value, dict) else Problem(path, message, value))
    return problems


def _one_branch_per_union(items: list[Any]) -> list[Any]:
    """A value that fits no member of a union gets one error per member from pydantic (``"PerFoo"``
    is neither a strategy name nor a ``{"Composite": [...]}`` object). Keep the errors of one
    member only: the first whose errors are about the value's contents (the value had that
    member's shape), else the first member's error about the value as a whole."""
    branches: dict[tuple[Any, ...], dict[str, list[tuple[int, bool]]]] = {}
    for position, item in enumerate(items):
        loc = tuple(item["loc"])
        at = next((i for i, part in enumerate(loc) if is_union_tag(part)), None)
        if at is None:
            continue
        deeper = any(not is_union_tag(part) for part in loc[at + 1 :])
        branches.setdefault(loc[:at], {}).setdefault(str(loc[at]), []).append((position, deeper))
    dropped: set[int] = set()
    for members in branches.values():
        if len(members) < 2:
            continue
        names = list(members)
        chosen = next((name for name in names if any(deep for _, deep in members[name])), names[0])
        for name in names:
            if name != chosen:
                dropped.update(position for position, _ in members[name])
    return [item for position, item in enumerate(items) if position not in dropped]


def _bound_message(kind: str, ctx: dict[str, Any]) -> str:
    words = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("greater than", "gt"),
        "less_than": ("less than", "lt"),
    }
    word, key = words[kind]
    return f"must be {word} {ctx.get(key)}"


def is_union_tag(part: str | int) -> bool:
    # pydantic adds the union member / function name to the location (e.g. "function-after[...]",
    # "int", "str", "CompositeStrategy"); they mean nothing to someone editing config.json.
    return isinstance(part, str) and (
        "[" in part
        or part in ("int", "str", "bool", "float", "none", "list[str]", "dict[str,any]")
        or part in _model_names()
    )


def _model_names() -> frozenset[str]:
    names: set[str] = set()
    pending = [ConfigModel]
    while pending:
        model = pending.pop()
        names.add(model.__name__)
        pending.extend(model.__subclasses__())
    return frozenset(names)


class StaleConfig(Exception):
    """An edit made from a config generation that is no longer the running one."""

    def __init__(self, based_on: int, running: int) -> None:
        super().__init__(
            f"the configuration changed while this edit was made (edited generation {based_on}, "
            f"running generation {running}): read it again and resend the change"
        )
