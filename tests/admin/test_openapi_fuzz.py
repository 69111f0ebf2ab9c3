"""Schemathesis against the LIVE gateway's admin API, from the OpenAPI document it serves.

Every operation of ``/api/openapi.json`` gets generated inputs (valid and invalid: bodies, path
and query parameters), sent with the admin token to a real gateway under uvicorn that runs a
throwaway config file; no answer may be a 5xx, and every answer must be JSON. Bounded: at most
``MAX_EXAMPLES`` inputs per operation, no shrinking-heavy phases, no deadline. The generated
routes that pass validation are really created (and persisted to the throwaway file); their
backends are never contacted because no traffic is sent to them and no health checks are set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.processes import Server, backend, gateway_server, route

TOKEN = "schemathesis-admin-token-42"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config: dict[str, Any] = {
        "version": 1,
        "jwt": {"secret": "a-jwt-secret-for-the-fuzzed-gateway-0000"},
        "routers": [
            route("/cats/{id}", "/echo/cats/{id}", [backend(upstream)]),
            route("/users", "/echo/users", [backend(upstream)], methods=("GET", "POST")),
        ],
    }
    with gateway_server(module_tmp, config, env={"KAIROS_ADMIN_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def admin_schema(gateway: Server) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/api/openapi.json", headers=HEADERS)


def json_answer(ctx: Any, response: Any, case: Any) -> bool:
    """Every admin answer is JSON, errors included."""
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"{response.status_code} {content_type!r}"
    return True


# Listed here rather than read from the document, so an endpoint dropped from it fails a test.
# (schemathesis's pytest plugin, `from_fixture(...).parametrize()`, does not run on pytest 9.)
OPERATIONS = [
    ("GET", "/routes"),
    ("POST", "/routes"),
    ("POST", "/routes/validate"),
    ("GET", "/routes/{path}"),
    ("PUT", "/routes/{path}"),
    ("DELETE", "/routes/{path}"),
    ("GET", "/config"),
    ("GET", "/config/status"),
    ("POST", "/config/reload"),
    ("GET", "/explain"),
    ("GET", "/backends"),
    ("POST", "/cache/purge"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics/list"),
    ("GET", "/metrics/history"),
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_error_on_any_generated_input(
    admin_schema: Any, gateway: Server, method: str, path: str, mode: GenerationMode
) -> None:
    operation = admin_schema["/api" + path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:  # the document's examples too: they reach the success paths
        strategy = st.one_of(strategy, *admin_schema.get_strategies_from_examples(operation))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            base_url=gateway.url, headers=HEADERS, checks=[not_a_server_error, json_answer], timeout=10
        )

    run()


def test_the_document_describes_every_admin_endpoint(gateway: Server) -> None:
    document = httpx.get(f"{gateway.url}/api/openapi.json", headers=HEADERS).json()
    assert document["openapi"].startswith("3.")
    expected = {
        "/api/routes": {"get", "post"},
        "/api/routes/validate": {"post"},
        "/api/routes/{path}": {"get", "put", "delete"},
        "/api/config": {"get"},
        "/api/config/status": {"get"},
        "/api/config/reload": {"post"},
        "/api/explain": {"get"},
        "/api/backends": {"get"},
        "/api/cache/purge": {"post"},
        "/api/openapi.json": {"get"},
        "/api/metrics/list": {"get"},
        "/api/metrics/history": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(document["paths"][path]), path
    assert httpx.get(f"{gateway.url}/api/openapi.json").status_code == 401  # the document is guarded too
