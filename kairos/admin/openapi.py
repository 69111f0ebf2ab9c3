"""The OpenAPI 3.1 document of the admin API, served at ``{prefix}/openapi.json``.

The paths are written here, next to the plain Starlette handlers they describe: they are the
contract operators and the schemathesis test (tests/admin/test_openapi_fuzz.py) read, checked
against the live gateway. Paths carry the configured prefix. The config components (``Route``,
``Backend`` and every section a route holds) are generated from the config models
(kairos/config/schema.py: pydantic's validation-mode schemas with the models' descriptions), so
they cannot drift from what the gateway accepts; the admin API's answers (status, explain,
purge, ...) are generated from the models the handlers build them from (kairos/api_models.py),
which the typed client parses them back into. The gateway still validates every route it is
given and answers 400 with every problem.
"""

from __future__ import annotations

import functools
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kairos.api_models import (
    Backends,
    ConfigStatus,
    Explanation,
    LlmAnalytics,
    MetricsSummary,
    PurgeResult,
    RouteAnswer,
    RouteList,
    RoutesReplaced,
    RouteValidation,
)
from kairos.config.model import HTTP_METHODS, BackendConfig, Protocol, RouteConfig
from kairos.config.schema import config_schemas
from kairos.observability.history import INTERVALS

_JSON = "application/json"
_COMPONENTS = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _COMPONENTS + name}


def _answer(description: str, schema: str = "Error") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


def _body(schema: str, required: bool = True, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema)}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {_JSON: media}}


def _example_route(path: str) -> dict[str, Any]:
    return {
        "external_path": path,
        "internal_path": "/internal" + path,
        "methods": ["GET"],
        "backends": [{"host": "http://127.0.0.1", "port": 8080}],
    }


_GUARD = {
    "401": _answer("Missing or wrong bearer token (KAIROS_ADMIN_TOKEN set)"),
    "403": _answer("No token configured and the client is not local"),
}
_SELECTORS: list[dict[str, Any]] = [
    {
        "name": "path",
        "in": "path",
        "required": True,
        "description": "The route's external_path without its leading slash, percent-encoded "
        "(/api/routes/cats/%7Bid%7D is /cats/{id}).",
        "schema": {"type": "string"},
        "example": "cats/{id}",
    },
    {
        "name": "method",
        "in": "query",
        "required": False,
        "description": "When several routes share the path: the one whose methods include this one.",
        "schema": {"type": "string", "enum": list(HTTP_METHODS)},
    },
    {
        "name": "protocol",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(get_args(Protocol))},
    },
    {
        "name": "index",
        "in": "query",
        "required": False,
        "description": "The route's position in `routers`.",
        "schema": {"type": "integer"},
    },
]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "The gateway's error body (kairos-rs GatewayError); route endpoints add "
        "kairos-rs's success/message.",
        "properties": {
            "error": {"type": "string"},
            "type": {"type": "string"},
            "timestamp": {"type": "string"},
            "request_id": {"type": "string"},
            "success": {"type": "boolean", "const": False},
            "message": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["error", "type"],
    },
    "ValidateRequest": {
        "type": "object",
        "properties": {"route": _ref("Route")},
        "required": ["route"],
    },
    "ReplaceRoutesRequest": {
        "type": "object",
        "properties": {
            "routes": {"type": "array", "items": _ref("Route")},
            "generation": {
                "type": "integer",
                "description": "Apply only if this config generation is still running (else 409).",
            },
        },
        "required": ["routes"],
    },
    "PurgeRequest": {
        "type": "object",
        "properties": {
            "route": {
                "type": ["string", "null"],
                "description": "a route's external_path or key; omitted: all",
            },
            "key_prefix": {
                "type": ["string", "null"],
                "description": "start of host/path?query as sent, e.g. api.example.com/users/",
            },
        },
        "additionalProperties": False,
    },
}


@functools.cache
def _config_components() -> dict[str, Any]:
    """A route as config.json holds it, its backends, and every section they use (RetryConfig, ...);
    generated on first use (~20 ms), not when the gateway imports this module."""
    schemas = config_schemas({"Route": RouteConfig, "Backend": BackendConfig}, _COMPONENTS)
    schemas.update(answer_schemas())
    taken = sorted(schemas.keys() & _SCHEMAS.keys())
    if taken:  # pragma: no cover - a config model named like one of the answers above
        raise RuntimeError(f"component names taken twice: {taken}")
    return schemas


# The admin API's answers, generated from the models the handlers build them from.
ANSWERS: tuple[type[BaseModel], ...] = (
    RouteList,
    RouteAnswer,
    RouteValidation,
    RoutesReplaced,
    ConfigStatus,
    Explanation,
    Backends,
    PurgeResult,
    MetricsSummary,
    LlmAnalytics,
)


def answer_schemas() -> dict[str, Any]:
    """JSON schemas of ``ANSWERS`` and the models inside them, as components (serialization
    mode: what the gateway sends)."""
    _, top = models_json_schema(
        [(model, "serialization") for model in ANSWERS], ref_template=_COMPONENTS + "{model}"
    )
    return dict(top["$defs"])


def document(prefix: str, version: str) -> dict[str, Any]:
    """The OpenAPI document for an admin API mounted at ``prefix``."""
    p = prefix
    paths: dict[str, Any] = {
        f"{p}/routes": {
            "get": {
                "summary": "List routes (as written, secrets redacted)",
                "operationId": "listRoutes",
                "responses": {"200": _answer("The routes", "RouteList"), **_GUARD},
            },
            "put": {
                "summary": "Replace the whole route list at once, all or nothing (kairos apply)",
                "operationId": "replaceRoutes",
                "parameters": [
                    {
                        "name": "dry_run",
                        "in": "query",
                        "required": False,
                        "description": "true: validate and report, change nothing.",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    }
                ],
                "requestBody": _body(
                    "ReplaceRoutesRequest", example={"routes": [_example_route("/examples/{id}")]}
                ),
                "responses": {
                    "200": _answer("Replaced and running (or, dry run, checked)", "RoutesReplaced"),
                    "400": _answer("Malformed JSON or routes that do not validate (every problem listed)"),
                    "409": _answer("The generation given is no longer running, or two routes clash"),
                    "413": _answer("Body too large"),
                    "500": _answer("The config file could not be written; nothing changed"),
                    **_GUARD,
                },
            },
            "post": {
                "summary": "Create a route; applied live and saved",
                "operationId": "createRoute",
                "requestBody": _body("Route", example=_example_route("/examples/{id}")),
                "responses": {
                    "201": _answer("Created and running", "RouteAnswer"),
                    "400": _answer("Malformed JSON or a route that does not validate (every problem listed)"),
                    "409": _answer("A route with this external_path and a common method exists"),
                    "413": _answer("Body too large"),
                    "500": _answer("The config file could not be written; nothing changed"),
                    **_GUARD,
                },
            },
        },
        f"{p}/routes/validate": {
            "post": {
                "summary": "Validate a route against the running config, without changing anything",
                "operationId": "validateRoute",
                "requestBody": _body("ValidateRequest", example={"route": _example_route("/examples/{id}")}),
                "responses": {
                    "200": _answer("Whether it is valid, with every error and warning", "RouteValidation"),
                    "400": _answer("Malformed JSON"),
                    "413": _answer("Body too large"),
                    **_GUARD,
                },
            }
        },
        f"{p}/routes/{{path}}": {
            "parameters": _SELECTORS,
            "get": {
                "summary": "One route",
                "operationId": "getRoute",
                "responses": {
                    "200": _answer("The route", "RouteAnswer"),
                    "400": _answer("A bad selector"),
                    "404": _answer("No such route"),
                    "409": _answer("Several routes have this path: pick one with method/protocol/index"),
                    **_GUARD,
                },
            },
            "put": {
                "summary": "Replace a route; applied live and saved ('***' keeps a running secret)",
                "operationId": "updateRoute",
                "requestBody": _body("Route", example=_example_route("/cats/{id}")),
                "responses": {
                    "200": _answer("Updated and running", "RouteAnswer"),
                    "400": _answer(
                        "Malformed JSON, validation problems, or external_path differs from the URL"
                    ),
                    "404": _answer("No such route"),
                    "409": _answer("Ambiguous path, or the update would duplicate another route"),
                    "413": _answer("Body too large"),
                    "500": _answer("The config file could not be written; nothing changed"),
                    **_GUARD,
                },
            },
            "delete": {
                "summary": "Delete a route; applied live and saved",
                "operationId": "deleteRoute",
                "responses": {
                    "200": _answer("Deleted", "RouteAnswer"),
                    "400": _answer("A bad selector, or the config without it does not validate"),
                    "404": _answer("No such route"),
                    "409": _answer("Several routes have this path: pick one with method/protocol/index"),
                    "500": _answer("The config file could not be written; nothing changed"),
                    **_GUARD,
                },
            },
        },
        f"{p}/config": {
            "get": {
                "summary": "The running config as written, every secret replaced by ***",
                "operationId": "getConfig",
                "responses": {
                    "200": {"description": "config.json", "content": {_JSON: {"schema": {"type": "object"}}}},
                    **_GUARD,
                },
            }
        },
        f"{p}/config/status": {
            "get": {
                "summary": "Config generation and the last reload's result",
                "operationId": "configStatus",
                "responses": {"200": _answer("Status", "ConfigStatus"), **_GUARD},
            }
        },
        f"{p}/config/reload": {
            "post": {
                "summary": "Re-read the config file and apply it; a bad file keeps the running config",
                "operationId": "reloadConfig",
                "responses": {
                    "200": _answer("Applied", "ConfigStatus"),
                    "409": _answer("The config was given as an object: no file", "ConfigStatus"),
                    "422": _answer(
                        "The file is invalid (problems listed); the old config keeps serving", "ConfigStatus"
                    ),
                    **_GUARD,
                },
            }
        },
        f"{p}/explain": {
            "get": {
                "summary": "Which route a request would match and why, its upstream URLs and policies",
                "operationId": "explain",
                "parameters": [
                    {
                        "name": "method",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": list(HTTP_METHODS)},
                    },
                    {
                        "name": "path",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^/"},
                    },
                    {"name": "host", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "websocket", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _answer("The explanation", "Explanation"),
                    "400": _answer("A missing or invalid query parameter (named)"),
                    **_GUARD,
                },
            }
        },
        f"{p}/backends": {
            "get": {
                "summary": "Every backend: routes, health, circuit state, in-flight, outlier ejection",
                "operationId": "listBackends",
                "responses": {"200": _answer("The backends", "Backends"), **_GUARD},
            }
        },
        f"{p}/cache/purge": {
            "post": {
                "summary": "Drop cached responses (all, one route's, and/or those under a key prefix)",
                "operationId": "purgeCache",
                "requestBody": _body("PurgeRequest", required=False),
                "responses": {
                    "200": _answer("How many entries went", "PurgeResult"),
                    "400": _answer("Malformed body"),
                    "413": _answer("Body too large"),
                    "503": _answer("A Redis cache store is unreachable"),
                    **_GUARD,
                },
            }
        },
        f"{p}/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}},
                    **_GUARD,
                },
            }
        },
        f"{p}/metrics/list": {
            "get": {
                "summary": "Names of the sampled metric series (kairos-rs)",
                "operationId": "metricsList",
                "responses": {
                    "200": {
                        "description": "Series names",
                        "content": {_JSON: {"schema": {"type": "array", "items": {"type": "string"}}}},
                    },
                    **_GUARD,
                },
            }
        },
        f"{p}/metrics/summary": {
            "get": {
                "summary": "Totals, the merged request-duration histogram and the busiest routes",
                "operationId": "metricsSummary",
                "parameters": [
                    {
                        "name": "top",
                        "in": "query",
                        "required": False,
                        "description": "How many of the busiest routes (default 10).",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10000},
                    }
                ],
                "responses": {
                    "200": _answer("The summary (this worker's)", "MetricsSummary"),
                    "400": _answer("A bad `top`"),
                    **_GUARD,
                },
            }
        },
        f"{p}/analytics/llm": {
            "get": {
                "summary": "LLM request analytics, aggregated by consumer, model, day, route or provider",
                "operationId": "llmAnalytics",
                "parameters": [
                    {
                        "name": "group_by",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["consumer", "model", "day", "route", "provider"],
                        },
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {"name": "consumer", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _answer("Rows, busiest first (by day: oldest first)", "LlmAnalytics"),
                    "400": _answer("A bad parameter (named)"),
                    "404": _answer("No analytics store runs"),
                    "503": _answer("The analytics database cannot answer now"),
                    **_GUARD,
                },
            }
        },
        f"{p}/metrics/history": {
            "get": {
                "summary": "Points of one series between two instants, raw or aggregated (kairos-rs)",
                "operationId": "metricsHistory",
                "parameters": [
                    {"name": "name", "in": "query", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "start",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "end",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "interval",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(INTERVALS)},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "[{timestamp, value:{type,value}}] or, with interval, "
                        "[{start_time, end_time, count, sum, min, max, avg}]",
                        "content": {_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}},
                    },
                    "400": _answer("A missing or invalid query parameter"),
                    **_GUARD,
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kairos admin API",
            "version": version,
            "description": "Route and config management, live reload, explain, backends, cache purge "
            "and metric history. Every endpoint needs `Authorization: Bearer <KAIROS_ADMIN_TOKEN>`; "
            "with no token configured only local clients are answered. Errors are JSON.",
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {**_SCHEMAS, **_config_components()},
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
    }
