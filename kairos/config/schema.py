"""JSON schemas of config.json, generated from the config models: the one source of the admin API's
OpenAPI components (kairos/admin/openapi.py) and of the configuration reference
(docs/configuration.md, kairos/config/reference.py).

The schemas are pydantic's ``mode="validation"`` schemas (what a file may hold, aliases as the file
spells them), with the descriptions the models carry, the defaults of default factories too, and
what the models' ``before`` validators accept besides the fields (see ``ConfigModel``). Per-field
titles are left out: the descriptions say more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

DEFS = "#/$defs/"


class ConfigJsonSchema(GenerateJsonSchema):
    """pydantic's generator, for documents an operator reads."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)


def config_schemas(models: Mapping[str, type[BaseModel]], ref_prefix: str = DEFS) -> dict[str, Any]:
    """The JSON schemas of ``models``, under the names given, and of every model they use, under its
    class name; every ``$ref`` is ``ref_prefix`` + a name of the result (``#/components/schemas/``
    for an OpenAPI document)."""
    _, generated = models_json_schema(
        [(model, "validation") for model in models.values()],
        ref_template=ref_prefix + "{model}",
        schema_generator=ConfigJsonSchema,
    )
    definitions: dict[str, Any] = generated.get("$defs", {})
    renamed = {model.__name__: name for name, model in models.items()}
    refs = {ref_prefix + old: ref_prefix + new for old, new in renamed.items()}
    schemas = {renamed.get(name, name): _with_refs(schema, refs) for name, schema in definitions.items()}
    missing = [name for name in models if name not in schemas]
    if missing:  # a model under a name pydantic had to qualify (two classes of one name)
        raise ValueError(f"no schema generated under the name(s) {', '.join(missing)}")
    return schemas


def _with_refs(value: Any, refs: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: refs.get(item, item) if key == "$ref" and isinstance(item, str) else _with_refs(item, refs)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_with_refs(item, refs) for item in value]
    return value
