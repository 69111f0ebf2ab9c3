"""The route form, generated from the JSON schema of ``RouteConfig``: the model the admin API
validates routes with, so the form cannot drift from what the gateway accepts (APISIX's dashboard
hand-copied its fields and drifted).

Every property of the schema becomes one control, chosen by its type:

- a string, integer or number: an input (a number that does not parse is sent as typed, and the
  gateway's validator names the field); a string enum: a select; a boolean: a checkbox;
- an array of enum strings (``methods``): a group of checkboxes; an array of strings: a textarea,
  one item per line;
- an array of objects (``backends``): one row per item and one empty row to add, each column a
  control of the item's properties;
- anything else (the nested sections: retry, cache, transformations, ...): a JSON editor seeded
  with the current value, the section's description beside it.

Keys of the route that the schema does not know (``_comment``, a newer gateway's fields) travel in
a hidden field and come back untouched. A problem the admin API reports is shown beside the
control its path names (``backends[0].port`` → the port of the first backend row), falling back to
the nearest enclosing field.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kairos.config.model import RouteConfig

SCALARS = ("string", "integer", "number", "boolean")


@dataclass(slots=True)
class Control:
    """One form control. ``name`` is the field's path with dots (``backends.0.port``)."""

    name: str
    label: str
    kind: str  # text | integer | number | boolean | select | checkboxes | lines | rows | json
    description: str = ""
    required: bool = False
    options: list[str] = field(default_factory=list)
    default: Any = None
    columns: list[Control] = field(default_factory=list)  # kind "rows": the item's controls

    @property
    def id(self) -> str:
        return "f-" + self.name.replace(".", "-")


@functools.cache
def route_schema() -> dict[str, Any]:
    return RouteConfig.model_json_schema(mode="validation")


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The node without ``$ref`` and without the ``null`` branch of an optional; and whether it
    was optional."""
    optional = False
    current = dict(node)
    if "anyOf" in current:
        branches = [b for b in current["anyOf"] if b.get("type") != "null"]
        optional = len(branches) < len(current["anyOf"])
        if len(branches) == 1:
            merged = {k: v for k, v in current.items() if k != "anyOf"}
            current = {**branches[0], **merged}
    if "$ref" in current:
        target = defs[current["$ref"].rsplit("/", 1)[-1]]
        current = {**target, **{k: v for k, v in current.items() if k != "$ref"}}
    return current, optional


def _kind(node: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[str, list[str], dict[str, Any] | None]:
    """(kind, enum options, item schema for rows)."""
    if "enum" in node and all(isinstance(v, str) for v in node["enum"]):
        return "select", list(node["enum"]), None
    kind = node.get("type")
    if kind == "boolean":
        return "boolean", [], None
    if kind in ("integer", "number"):
        return kind, [], None
    if kind == "string":
        return "text", [], None
    if kind == "array":
        items, _ = _resolve(node.get("items", {}), defs)
        if "enum" in items:
            return "checkboxes", [str(v) for v in items["enum"]], None
        if items.get("type") == "string":
            return "lines", [], None
        if items.get("type") == "object" and items.get("properties"):
            return "rows", [], items
    return "json", [], None


def _controls(schema: Mapping[str, Any], defs: Mapping[str, Any], prefix: str = "") -> list[Control]:
    required = set(schema.get("required", []))
    controls = []
    for name, raw in schema.get("properties", {}).items():
        if raw.get("writeOnly"):  # another spelling of a key the form already has (e.g. dns.zones)
            continue
        node, _ = _resolve(raw, defs)
        kind, options, items = _kind(node, defs)
        control = Control(
            name=prefix + name,
            label=name,
            kind=kind,
            description=str(raw.get("description") or node.get("description") or ""),
            required=name in required,
            options=options,
            default=raw.get("default", node.get("default")),
        )
        if items is not None:
            columns = _controls(items, defs, "")
            # Cells are scalars or small JSON values; a row of nested tables would not fit a screen.
            for column in columns:
                if column.kind in ("rows", "checkboxes", "lines"):
                    column.kind = "json"
            control.columns = columns
        controls.append(control)
    return controls


@functools.cache
def route_controls() -> tuple[Control, ...]:
    schema = route_schema()
    return tuple(_controls(schema, schema.get("$defs", {})))


# -- values for the template -------------------------------------------------------------------


def display_value(control: Control, value: Any) -> Any:
    """What the control shows for ``value`` (the route's, or the user's input after a failure)."""
    if value is None:
        return "" if control.kind not in ("checkboxes", "boolean") else value
    if control.kind == "json":
        return value if isinstance(value, str) else json.dumps(value, indent=2)
    if control.kind == "lines":
        return "\n".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return value


# -- reading a submitted form ------------------------------------------------------------------


class FormProblems(Exception):
    """Fields the form itself could not read (bad JSON), by control name."""

    def __init__(self, problems: dict[str, str], document: dict[str, Any] | None = None) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems
        self.document = document or {}


def _scalar(control: Control, text: str) -> Any:
    text = text.strip()
    if control.kind == "integer":
        try:
            return int(text)
        except ValueError:
            return text  # the validator names the field and says what it wants
    if control.kind == "number":
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _read(control: Control, form: Mapping[str, Any], getlist: Any, problems: dict[str, str]) -> Any:
    """The value of one control in a submitted form; ``None`` means "leave the key out"."""
    key = control.name
    if control.kind == "boolean":
        checked = form.get(key) == "on"
        return checked if checked != bool(control.default) else None
    if control.kind == "checkboxes":
        chosen = [value for value in getlist(key) if value in control.options]
        return chosen or None
    if control.kind == "rows":
        rows = []
        index = 0
        while any(f"{key}.{index}.{column.name}" in form for column in control.columns):
            row = {}
            for column in control.columns:
                cell = Control(
                    f"{key}.{index}.{column.name}", column.name, column.kind, default=column.default
                )
                value = _read(cell, form, getlist, problems)
                if value is not None:
                    row[column.name] = value
            if any(v not in ("", None) for v in row.values()):
                rows.append(row)
            index += 1
        return rows or None
    text = str(form.get(key, ""))
    if not text.strip():
        return None
    if control.kind == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if control.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            problems[key] = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            return None
    return _scalar(control, text)


def read_route(form: Mapping[str, Any], getlist: Any) -> dict[str, Any]:
    """The route document a submitted form describes. Raises FormProblems for fields that could
    not be read at all; everything else goes to the gateway, whose validator has the last word."""
    problems: dict[str, str] = {}
    document: dict[str, Any] = {}
    extra = form.get("_extra")
    if extra:
        try:
            kept = json.loads(str(extra))
        except json.JSONDecodeError:
            kept = {}
        if isinstance(kept, dict):
            document.update(kept)
    for control in route_controls():
        value = _read(control, form, getlist, problems)
        if value is not None:
            document[control.name] = value
    if problems:
        raise FormProblems(problems, document)
    return document


def unknown_keys(route: Mapping[str, Any]) -> dict[str, Any]:
    """The route's keys the form has no control for, kept as they are."""
    known = {control.name for control in route_controls()}
    return {key: value for key, value in route.items() if key not in known}


# -- problems beside their fields --------------------------------------------------------------

_INDEX = re.compile(r"\[(\d+)\]")


def problem_fields(problems: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Map ``path: message`` problems to control names; the rest are general."""
    names = {control.name for control in route_controls()}
    columns = {f"{control.name}.{column.name}" for control in route_controls() for column in control.columns}
    placed: dict[str, list[str]] = {}
    general: list[str] = []
    for problem in problems:
        path, separator, message = problem.partition(": ")
        if not separator:
            general.append(problem)
            continue
        dotted = _INDEX.sub(r".\1", re.sub(r"^routers\[\d+\]\.", "", path.strip())).lstrip(".")
        target = _nearest(dotted, names, columns)
        if target is None:
            general.append(problem)
        else:
            placed.setdefault(target, []).append(f"{path}: {message}")
    return placed, general


def _nearest(dotted: str, names: set[str], columns: set[str]) -> str | None:
    parts = dotted.split(".")
    if len(parts) >= 3 and parts[1].isdigit():
        column = f"{parts[0]}.{parts[2]}"
        if column in columns:
            return f"{parts[0]}.{parts[1]}.{parts[2]}"
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in names:
            return candidate
    return None
