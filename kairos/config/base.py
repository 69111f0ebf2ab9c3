"""Shared pieces of the config models.

Scalars are strict (``"5900"`` is not a port, as in kairos-rs's serde), containers are lenient
(JSON arrays become tuples so the validated config is immutable). Unknown keys are kept in
``model_extra`` so the loader can warn about them instead of dropping them silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, cast

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, Strict
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
StatusCode = Annotated[int, Strict(), Field(ge=100, le=599)]

HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ConfigModel(BaseModel):
    """A section of config.json. Its JSON schema (``mode="validation"``: what a file may hold) is the
    one source of the admin API's OpenAPI components and of docs/configuration.md
    (kairos/config/schema.py). What a ``before`` validator accepts besides the fields is declared
    once below, so the schema describes the input format and not only the normalised model."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    # Keys a ``before`` validator renames into fields (spellings from kairos-rs's docs): key -> the
    # JSON schema of its value, with a ``description``. Listed in the schema like fields.
    input_keys: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # Keys (as the schema names them) the model requires that the input may leave out, because a
    # renamed key or another shape supplies them; and keys with a default the loader requires.
    input_optional: ClassVar[tuple[str, ...]] = ()
    input_required: ClassVar[tuple[str, ...]] = ()
    # JSON schemas of the non-object forms a ``before`` validator expands (``true`` for
    # ``{"enabled": true}``): the section's schema becomes one of them or the object.
    input_shorthands: ClassVar[tuple[Mapping[str, Any], ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        target = handler.resolve_ref_schema(json_schema)
        if cls.input_keys:
            target.setdefault("properties", {}).update(
                {key: dict(value) for key, value in cls.input_keys.items()}
            )
        if cls.input_optional or cls.input_required:
            required = [name for name in target.get("required", ()) if name not in cls.input_optional]
            required += [name for name in cls.input_required if name not in required]
            target.pop("required", None)
            if required:
                target["required"] = required
        if cls.input_shorthands:
            shape = {key: value for key, value in target.items() if key not in ("title", "description")}
            for key in shape:
                del target[key]
            target["anyOf"] = [*(dict(form) for form in cls.input_shorthands), shape]
        return json_schema


def also_spelled(*names: str) -> Callable[[JsonDict], None]:
    """A field's ``json_schema_extra``: the spellings a ``before`` validator maps to the canonical
    names of the field's enum (``per_ip`` for ``PerIP``), added to that enum in the schema."""

    def extend(schema: JsonDict) -> None:
        for choice in [schema, *cast(list[JsonDict], schema.get("anyOf", []))]:
            if isinstance(choice.get("enum"), list):
                choice["enum"] = [*cast(list[str], choice["enum"]), *names]

    return extend


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile once at load; a bad pattern is a config error that names the pattern. Besides
    ``re.error``, ``re.compile`` fails with OverflowError on a repeat count over the engine's limit
    (``a{4294967296}``) and RecursionError on deep nesting (``((((...``); pydantic turns only
    ValueError into a validation error, so those would escape the loader as crashes (tests/fuzz)."""
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
