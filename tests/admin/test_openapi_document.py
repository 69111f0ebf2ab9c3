"""The admin API's OpenAPI document, offline: its config components are the config models' schemas,
nothing in the hand-written part copies their keys or enums, and the document holds together.
(tests/admin/test_openapi_fuzz.py runs schemathesis on it against a live gateway.)"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from typing import Any, get_args

import jsonschema
import referencing
import referencing.jsonschema

from kairos.admin import openapi
from kairos.config.model import HTTP_METHODS, BackendConfig, Protocol, RouteConfig
from kairos.config.schema import config_schemas
from kairos.observability.history import INTERVALS

DOCUMENT = openapi.document("/api", "test")
COMPONENTS: dict[str, Any] = DOCUMENT["components"]["schemas"]
GENERATED = config_schemas({"Route": RouteConfig, "Backend": BackendConfig}, "#/components/schemas/")


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    resource = referencing.Resource.from_contents(
        DOCUMENT, default_specification=referencing.jsonschema.DRAFT202012
    )
    registry = referencing.Registry().with_resource("urn:admin-api", resource)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_config_components_are_generated_from_the_models() -> None:
    for name, schema in GENERATED.items():
        assert COMPONENTS[name] == schema, name
    route = COMPONENTS["Route"]
    assert route["description"] == inspect.cleandoc(RouteConfig.__doc__ or "")
    # Every key, none aliased away; then the keys a validator moves into a section (a DNS route's
    # flat `zones`, `policy`, ...), declared as input keys.
    assert list(route["properties"]) == [*RouteConfig.model_fields, *RouteConfig.input_keys]
    assert route["properties"]["retry"]["anyOf"][0] == {"$ref": "#/components/schemas/RetryConfig"}
    assert route["properties"]["backends"]["anyOf"][0]["items"] == {"$ref": "#/components/schemas/Backend"}
    assert all(prop.get("description") for prop in route["properties"].values())
    assert route["additionalProperties"] is True  # other keys are warned about, not refused


def test_the_hand_written_enums_come_from_the_code() -> None:
    selectors = {
        parameter["name"]: parameter for parameter in DOCUMENT["paths"]["/api/routes/{path}"]["parameters"]
    }
    assert selectors["protocol"]["schema"]["enum"] == list(get_args(Protocol))
    assert selectors["method"]["schema"]["enum"] == list(HTTP_METHODS)
    history = DOCUMENT["paths"]["/api/metrics/history"]["get"]["parameters"]
    assert next(p for p in history if p["name"] == "interval")["schema"]["enum"] == list(INTERVALS)


def test_no_list_of_model_keys_or_enum_values_is_copied_into_the_module() -> None:
    """Every list of two or more strings written in kairos/admin/openapi.py is checked against what
    the models define: it may not be an enum of theirs or a set of one model's keys."""
    enums = [set(node["enum"]) for node in _walk(GENERATED) if isinstance(node, dict) and "enum" in node]
    enums.append(set(HTTP_METHODS))
    keys = [set(schema.get("properties", ())) for schema in GENERATED.values()]
    source = ast.parse(inspect.getsource(openapi))
    for node in ast.walk(source):
        strings = [
            item.value
            for item in getattr(node, "elts", ())
            if isinstance(item, ast.Constant) and isinstance(item.value, str)
        ]
        if isinstance(node, ast.List | ast.Tuple) and len(strings) == len(node.elts) >= 2:
            written = set(strings)
            assert not any(written <= enum for enum in enums), f"line {node.lineno}: {sorted(written)}"
            assert not any(written <= names for names in keys), f"line {node.lineno}: {sorted(written)}"


def test_every_schema_is_valid_and_every_reference_resolves() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    for name, schema in COMPONENTS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name == schema.get("title", name) or name in ("Route", "Backend") or "title" not in schema
    refs = {node["$ref"] for node in _walk(DOCUMENT) if isinstance(node, dict) and "$ref" in node}
    assert refs and all(ref.removeprefix("#/components/schemas/") in COMPONENTS for ref in refs), refs


def test_the_examples_of_the_document_fit_its_schemas() -> None:
    checked = 0
    for path in DOCUMENT["paths"].values():
        for operation in path.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            media = operation["requestBody"]["content"]["application/json"]
            if "example" in media:
                schema = {"$ref": "urn:admin-api" + media["schema"]["$ref"]}
                assert list(_validator(schema).iter_errors(media["example"])) == []
                checked += 1
    assert checked == 4


def test_a_kairos_rs_route_with_aliases_fits_the_route_schema() -> None:
    route = {
        "external_path": "/cats/{id}",
        "internal_path": "/cats/{id}",
        "methods": ["GET"],
        "host": "http://legacy",
        "retry_config": {"retryable_status_codes": [503]},
        "rate_limit": {"strategy": "sliding_window", "requests_per_minute": 90, "burst_size": 135},
        "security_headers": False,
        "ai_policy": {"enabled": True, "strategy": {"content_analysis": {"model": "m"}}},
    }
    assert list(_validator({"$ref": "urn:admin-api#/components/schemas/Route"}).iter_errors(route)) == []
    route["backends"] = []
    assert list(_validator({"$ref": "urn:admin-api#/components/schemas/Route"}).iter_errors(route)) != []
