"""docs/configuration.md, the configuration reference, generated from the config models.

``python -m kairos.config.reference > docs/configuration.md`` writes it;
tests/config/test_reference.py fails when the committed file is not what this prints. One section per
model, in the order a reader meets them (the top level, a route, its backends, then breadth first),
each with a table of its keys: type, default and description from the JSON schema the admin API's
OpenAPI document uses too (kairos/config/schema.py), aliases from the fields. Plain Markdown only
(tables, headings, code spans, links to headings), for the mkdocs site.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from kairos.config.model import BackendConfig, GatewayConfig, RouteConfig
from kairos.config.schema import DEFS, config_schemas

COMMAND = "python -m kairos.config.reference > docs/configuration.md"
ROOT = GatewayConfig
FIRST = (GatewayConfig, RouteConfig, BackendConfig)  # then the others, breadth first

INTRO = f"""\
# Configuration reference

Every key of `config.json`, generated from the config models (`kairos/config/`) by
`{COMMAND}`: do not edit this page by hand. The [guide](config-guide.md) explains the
file with examples; the feature pages say what each section does in depth.

- One section per object, headed by where it sits in the file (`routers[]` is an element of the
  `routers` array); sections used in several places say where.
- Types are JSON types; "integer 1-65535" gives the accepted range. Integers and booleans are
  strict: `"5900"` is not a port, `"true"` is not `true`.
- Default "unset": the key may be left out (or be `null`); the description says what that means.
  "required": the key must be given. A key listed with "(also ...)" may be spelled either way.
- The admin API's OpenAPI document (`/api/openapi.json`) holds the same schemas for a route and
  everything in it.
"""


@dataclass(slots=True)
class Section:
    name: str  # the model's schema name
    model: type[BaseModel]
    path: str  # where a reader first meets it, e.g. routers[].retry ("" for the top level)
    used_as: list[tuple[str, str]] = field(default_factory=list)  # (parent section name, key)


def render() -> str:
    schemas = config_schemas({ROOT.__name__: ROOT})
    models = {model.__name__: model for model in _models(ROOT)}
    sections = _sections(schemas, models)
    slugs = _slugs(sections)
    out = [INTRO]
    for section in sections:
        out.append(_section(section, schemas[section.name], sections, slugs))
    return "\n".join(out)


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    pending = [model]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        for info in current.model_fields.values():
            pending.extend(_models_in(info.annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in getattr(annotation, "__args__", ()) for model in _models_in(argument)]


def _sections(schemas: dict[str, Any], models: dict[str, type[BaseModel]]) -> list[Section]:
    """Every model reachable from the top level, with the path where it is first met (breadth first,
    keys in file order) and every key that holds it."""
    found: dict[str, Section] = {ROOT.__name__: Section(ROOT.__name__, ROOT, "")}
    queue = [ROOT.__name__]
    while queue:
        parent = found[queue.pop(0)]
        for key, schema in _properties(schemas[parent.name]).items():
            for name, suffix in _refs(schema, ""):
                if name not in found:
                    path = f"{parent.path}.{key}{suffix}" if parent.path else f"{key}{suffix}"
                    found[name] = Section(name, models[name], path)
                    queue.append(name)
                if (parent.name, key) not in found[name].used_as:
                    found[name].used_as.append((parent.name, key))
    order = [model.__name__ for model in FIRST]
    return [found[name] for name in order] + [
        section for section in found.values() if section.name not in order
    ]


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    """The keys of a model's schema (of its object form, when it also has shorthand forms)."""
    for form in schema.get("anyOf", [schema]):
        if "properties" in form:
            return dict(form["properties"])
    return {}


def _refs(schema: Any, suffix: str) -> Iterator[tuple[str, str]]:
    """(model name, path suffix such as ``[]``) of the models a property's schema holds."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(DEFS):
        yield ref.removeprefix(DEFS), suffix
    for choice in schema.get("anyOf", ()):
        yield from _refs(choice, suffix)
    if "items" in schema:
        yield from _refs(schema["items"], suffix + "[]")
    if isinstance(schema.get("additionalProperties"), dict):  # a map: its values (e.g. llm.models)
        yield from _refs(schema["additionalProperties"], suffix + ".<name>")


def _slugs(sections: list[Section]) -> dict[str, str]:
    """The anchor of each section's heading, as Python-Markdown's toc extension (mkdocs) makes it."""
    slugs: dict[str, str] = {}
    used: set[str] = set()
    for section in sections:
        slug = base = _slugify(_heading_text(section))
        number = 0
        while slug in used:
            number += 1
            slug = f"{base}_{number}"
        used.add(slug)
        slugs[section.name] = slug
    return slugs


def _slugify(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _heading_text(section: Section) -> str:
    return section.path or "Top level"


def _section(section: Section, schema: dict[str, Any], sections: list[Section], slugs: dict[str, str]) -> str:
    heading = f"`{section.path}`" if section.path else "Top level"
    lines = [f"## {heading}", ""]
    description = schema.get("description")
    if description:
        lines += [description, ""]
    by_name = {other.name: other for other in sections}
    if section.used_as:
        places = ", ".join(_place(by_name[parent], key, slugs) for parent, key in section.used_as)
        lines += [f"Model `{section.name}`, the value of {places}.", ""]
    shorthands = [form for form in schema.get("anyOf", ()) if "properties" not in form]
    if shorthands:
        lines += ["Also accepted instead of the object:", ""]
        lines += [f"- {_type(form, slugs)}: {_text(form.get('description', ''))}" for form in shorthands]
        lines.append("")
    required = set(_object_form(schema).get("required", ()))
    fields = _fields_by_key(section.model)
    lines += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, prop in _properties(schema).items():
        info = fields.get(key)
        cells = [
            _key_cell(key, info),
            _type(prop, slugs),
            _default(key, prop, required),
            _text(prop.get("description", "")),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _object_form(schema: dict[str, Any]) -> dict[str, Any]:
    for form in schema.get("anyOf", [schema]):
        if "properties" in form:
            return dict(form)
    return schema


def _place(parent: Section, key: str, slugs: dict[str, str]) -> str:
    where = f"[`{_heading_text(parent)}`](#{slugs[parent.name]})" if parent.path else "the top level"
    return f"`{key}` in {where}" if parent.path else f"`{key}` at {where}"


def _fields_by_key(model: type[BaseModel]) -> dict[str, tuple[str, FieldInfo]]:
    """Schema key -> (field name, field): the key is the field's alias when it has one."""
    keys: dict[str, tuple[str, FieldInfo]] = {}
    for name, info in model.model_fields.items():
        keys[_names(name, info)[0]] = (name, info)
    return keys


def _names(name: str, info: FieldInfo) -> list[str]:
    """Every key a field is read from, the one the schema uses first."""
    names: list[str] = []
    alias = info.validation_alias if info.validation_alias is not None else info.alias
    if isinstance(alias, str):
        names.append(alias)
    elif isinstance(alias, AliasChoices):
        names += [choice for choice in alias.choices if isinstance(choice, str)]
    if name not in names:
        names.append(name)  # populate_by_name: the field's own name works too
    return names


def _key_cell(key: str, info: tuple[str, FieldInfo] | None) -> str:
    aliases = [name for name in _names(*info) if name != key] if info is not None else []
    if not aliases:
        return f"`{key}`"
    return f"`{key}` (also {', '.join(f'`{alias}`' for alias in aliases)})"


def _text(text: str) -> str:
    return " ".join(text.split())


def _default(key: str, prop: dict[str, Any], required: set[str]) -> str:
    if key in required:
        return "required"
    if "default" not in prop:
        return "-"
    value = prop["default"]
    if value is None:
        return "unset"
    if isinstance(value, dict) and value and any(True for _ in _refs(prop, "")):
        return "all defaults"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _type(schema: dict[str, Any], slugs: dict[str, str]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix(DEFS)
        return f"object: [{name}](#{slugs[name]})"
    if "anyOf" in schema:
        choices = [choice for choice in schema["anyOf"] if choice.get("type") != "null"]
        text = " or ".join(_type({**_inherited(schema), **choice}, slugs) for choice in choices)
        return text
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        text = "array of " + _type(schema.get("items", {}), slugs)
        if schema.get("minItems"):
            text += f", at least {schema['minItems']}"
        return text
    if kind == "object":
        names = schema.get("propertyNames", {}).get("enum")
        if names and schema.get("maxProperties") == 1:
            return "object with one key, one of " + ", ".join(f"`{json.dumps(name)}`" for name in names)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return "object of " + _type(extra, slugs)
        return "object"
    if kind in ("integer", "number"):
        return f"{kind}{_range(schema)}"
    if kind == "string":
        text = "string"
        if schema.get("format") == "password":
            text += " (secret)"
        if schema.get("minLength"):
            text = "non-empty " + text
        if "pattern" in schema:
            text += f" matching `{schema['pattern']}`"
        return text
    if kind == "boolean":
        return "boolean"
    return "any"


def _inherited(schema: dict[str, Any]) -> dict[str, Any]:
    """Keywords written beside an ``anyOf`` that constrain its choices (a port's range)."""
    keep = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "pattern", "items")
    return {key: value for key, value in schema.items() if key in keep}


def _range(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f" {low}-{high}"
    parts = []
    if low is not None:
        parts.append(f">= {low}")
    if "exclusiveMinimum" in schema:
        parts.append(f"> {schema['exclusiveMinimum']}")
    if high is not None:
        parts.append(f"<= {high}")
    if "exclusiveMaximum" in schema:
        parts.append(f"< {schema['exclusiveMaximum']}")
    return " " + ", ".join(parts) if parts else ""


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
