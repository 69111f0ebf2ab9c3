"""The JSON schema generated from the config models (kairos/config/schema.py) describes the input
format: what the loader accepts, the schema accepts, aliases, README shapes and shorthands included
(the admin API's OpenAPI document and docs/configuration.md are made from it).

One deliberate difference: where the loader ignores letter case (methods, `protocol`,
`load_balancing_strategy`, rate-limit names), the schema lists the documented spellings only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from kairos.config import ConfigError
from kairos.config.base import ConfigModel
from kairos.config.model import GatewayConfig
from kairos.config.schema import config_schemas
from tests.config.builders import SECRET, backend, config, load, route
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import transformations, valid_configs

ROOT = Path(__file__).parents[2]
SCHEMAS = config_schemas({"GatewayConfig": GatewayConfig})
VALIDATOR = jsonschema.Draft202012Validator({"$ref": "#/$defs/GatewayConfig", "$defs": SCHEMAS})
ENVIRON = {"FUZZ_SECRET": SECRET, "JWT_SECRET": SECRET, "OPENAI_API_KEY": "sk-x", "BILLING_KEY": "k"}


def schema_errors(document: Any) -> list[str]:
    return [f"{list(error.absolute_path)}: {error.message}" for error in VALIDATOR.iter_errors(document)]


def config_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    pending: list[type[BaseModel]] = [GatewayConfig]
    while pending:
        model = pending.pop()
        if model in found:
            continue
        found.append(model)
        for info in model.model_fields.values():
            pending.extend(_models_in(info.annotation))
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


def test_every_key_and_section_is_described_for_operators() -> None:
    models = config_models()
    assert len(models) == len(SCHEMAS)  # every model reachable from the top level has a schema
    for model in models:
        assert issubclass(model, ConfigModel)
        assert model.__doc__ and model.__doc__.strip(), f"{model.__name__} has no docstring"
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert "|" not in info.description, f"{model.__name__}.{name}: a `|` would split its table cell"
        assert SCHEMAS[model.__name__].get("description"), model.__name__


def test_the_sample_files_validate_against_the_schema() -> None:
    files = [
        *sorted((ROOT / "tests/fixtures/kairos_rs").glob("*.json")),
        *sorted((ROOT / "examples").glob("**/config.json")),
        ROOT / "kairos/config/default_config.json",
    ]
    assert len(files) >= 8
    for path in files:
        document = json.loads(path.read_text("utf-8"))
        load(document, ENVIRON)  # they load ...
        assert schema_errors(document) == [], path  # ... and the schema says so too


def test_aliases_readme_shapes_and_shorthands_are_in_the_schema() -> None:
    document = config(
        route(
            "/a/{id}",
            "/b/{id}",
            retry_config={"base_delay_ms": 10, "max_delay_ms": 20, "retryable_status_codes": [503]},
            rate_limit={"algorithm": "token_bucket", "requests_per_second": 5, "burst_size": 2},
            security_headers=False,
            cors={"allowed_origins": ["*"], "expose_headers": ["X-A"]},
            ai_policy={"enabled": True, "strategy": "latency_prediction"},
            response_transformation={
                "status_code_mappings": [
                    {"from": 404, "to": 200, "condition": {"status": 404}},
                    {"from": 418, "to": 400, "condition": "free text, warned about"},
                ]
            },
        ),
        route(
            "/c",
            "/c",
            backends=[backend(), backend("http://10.0.0.6")],
            ai_policy={"enabled": True, "strategy": {"content_analysis": {"model": "m"}}},
            rate_limit={"strategy": {"Composite": [{"strategy": "per_user", "requests_per_minute": 9}]}},
            request_transformation={"headers": [{"action": "remove", "name": "X-A", "_note": "a comment"}]},
        ),
        route("/d", "/d", host="http://legacy", rate_limit={"enabled": False}),
        jwt_secret=SECRET,
        ai={"provider": "openai", "model": "gpt-4o", "api_key": "sk-x"},
        metrics={"endpoint": "/m"},
        rate_limit={"strategy": "sliding_window", "requests_per_hour": 100},
        security_headers=True,
        _comment="notes are fine anywhere",
    )
    load(document)
    assert schema_errors(document) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"port": 70000}, "backends"),
        ({"methods": ["FETCH"]}, "methods"),
        ({"methods": []}, "methods"),
        ({"protocol": "gopher"}, "protocol"),
        ({"timeout_ms": -1}, "timeout_ms"),
        ({"ai_policy": {"enabled": True, "strategy": "anomaly_detection"}}, "ai_policy"),
        ({"ai_policy": {"enabled": True, "strategy": {"semantic": {}, "content_analysis": {}}}}, "ai_policy"),
        ({"rate_limit": {"strategy": "PerPlanet", "requests_per_second": 1}}, "rate_limit"),
        (
            {
                "request_transformation": {
                    "headers": [{"action": "set", "name": "X", "value": "1", "condition": {"hedaer": "a"}}]
                }
            },
            "request_transformation",
        ),
        (
            {"response_transformation": {"status_code_mappings": [{"from": 404, "to": 1000}]}},
            "response_transformation",
        ),
        ({"security_headers": "yes"}, "security_headers"),
    ],
)
def test_what_the_loader_refuses_the_schema_refuses_too(change: dict[str, Any], where: str) -> None:
    changed = route(**change) if "port" not in change else route(backends=[backend(port=change["port"])])
    document = config(changed)
    with pytest.raises(ConfigError):
        load(document)
    errors = schema_errors(document)
    assert errors and all(error.startswith(f"['routers', 0, '{where}'") for error in errors), errors


def test_what_the_loader_requires_the_schema_requires() -> None:
    assert SCHEMAS["GatewayConfig"]["required"] == ["routers"]
    assert SCHEMAS["RouteConfig"]["required"] == ["external_path", "internal_path", "methods"]
    assert "required" not in SCHEMAS["RateLimitConfig"]  # the README shape, Composite or `enabled: false`
    assert schema_errors({"version": 1}) == ["[]: 'routers' is a required property"]


def _canonical_case(document: Any) -> Any:
    """The spelling the schema lists for the keys the loader reads in any case."""
    for route_document in document.get("routers", []):
        if isinstance(route_document, dict) and isinstance(route_document.get("methods"), list):
            route_document["methods"] = [
                method.upper() if isinstance(method, str) else method for method in route_document["methods"]
            ]
    return document


@given(document=valid_configs(), extra=st.lists(transformations(), max_size=2))
@fuzz_settings(scale=0.5)
def test_every_document_the_loader_accepts_validates_against_the_schema(
    document: dict[str, Any], extra: list[dict[str, Any]]
) -> None:
    for route_document, rules in zip(document["routers"], extra, strict=False):
        route_document.update(rules)
    try:
        load(document, ENVIRON)
    except ConfigError:
        return
    assert schema_errors(_canonical_case(document)) == []
