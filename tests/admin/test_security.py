"""Who may call the admin API, where it lives, and that it always answers JSON — through the real
gateway under uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kairos.admin.responses import AdminErrors
from tests.asgi import AsgiClients
from tests.processes import Server, backend, gateway_server, route

TOKEN = "admin-token-for-tests-7d1f"


def config(upstream: Server) -> dict[str, Any]:
    return {
        "version": 1,
        "routers": [
            route("/cats/{id}", "/echo/cats/{id}", [backend(upstream)]),
            # Under the prefix: reached, except for the admin API's own sections (/api/config …).
            route("/api/{*rest}", "/echo/user-api/{rest}", [backend(upstream)]),
        ],
    }


@pytest.fixture(scope="module")
def with_token(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, config(upstream), env={"KAIROS_ADMIN_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def local_only(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, config(upstream), env={"KAIROS_ADMIN_TOKEN": ""}) as server:
        yield server


def test_a_token_is_required_when_configured(with_token: Server) -> None:
    url = f"{with_token.url}/api/routes"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json()["type"] == "authentication_error"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}x"})
    assert wrong.status_code == 401
    assert httpx.get(url, headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401
    right = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.json()["success"] is True
    # A refused call changes nothing: the guard answers before any handler runs.
    created = httpx.post(url, json=route("/sneaky", "/echo/x", [{"host": "http://127.0.0.1", "port": 1}]))
    assert created.status_code == 401
    assert httpx.get(f"{with_token.url}/sneaky").status_code == 404


def test_without_a_token_only_local_clients_are_answered(local_only: Server) -> None:
    url = f"{local_only.url}/api/config/status"
    assert httpx.get(url).status_code == 200  # 127.0.0.1
    forwarded = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status_code == 403
    assert forwarded.json()["type"] == "authorization_error"
    assert "KAIROS_ADMIN_TOKEN" in forwarded.json()["error"]
    assert "answers only loopback clients" in local_only.output()


def test_user_routes_under_the_prefix_are_reached_except_admin_sections(local_only: Server) -> None:
    proxied = httpx.get(f"{local_only.url}/api/things")
    assert proxied.status_code == 200  # kairos-rs compatible: /api/... stays the user's
    assert proxied.json()["path"] == "/echo/user-api/things"
    admin = httpx.get(f"{local_only.url}/api/config/status")
    assert admin.status_code == 200 and "version" in admin.json()  # the admin API answered
    assert "routers[1]: external_path /api/{*rest} can match the admin API's" in local_only.output()


def test_unknown_paths_and_wrong_methods_answer_json(local_only: Server) -> None:
    missing = httpx.get(f"{local_only.url}/api/config/no/such/endpoint")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["request_id"]
    wrong = httpx.delete(f"{local_only.url}/api/config")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"
    assert wrong.json()["type"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]
    listed = httpx.patch(f"{local_only.url}/api/routes")
    assert listed.status_code == 405 and set(listed.headers["allow"].split(", ")) >= {"GET", "POST"}
    # A path under the prefix that Starlette's Mount pattern cannot take (an encoded newline) gets
    # JSON from the app-level handler; so does a wrong method on a built-in endpoint.
    odd = httpx.get(f"{local_only.url}/api/routes/a%0Ab")
    assert odd.status_code == 404 and odd.headers["content-type"] == "application/json"
    assert httpx.post(f"{local_only.url}/health").headers["content-type"] == "application/json"


def test_the_prefix_moves_and_the_old_one_goes_to_the_proxy(module_tmp: Path, upstream: Server) -> None:
    with gateway_server(module_tmp, config(upstream), env={"KAIROS_ADMIN_PREFIX": "/admin"}) as moved:
        admin = httpx.get(f"{moved.url}/admin/routes")
        assert admin.status_code == 200 and admin.json()["message"] == "Found 2 routes"
        proxied = httpx.get(f"{moved.url}/api/routes")
        assert proxied.status_code == 200
        assert proxied.json()["path"] == "/echo/user-api/routes"  # the user's route, proxied
        document = httpx.get(f"{moved.url}/admin/openapi.json").json()
        assert "/admin/routes" in document["paths"] and "/api/routes" not in document["paths"]


def test_an_unexpected_error_in_a_handler_is_a_json_500(asgi_client: AsgiClients) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/broken", broken)])
    answer = asgi_client(AdminErrors(app.router), raise_app_exceptions=False).get("/broken")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["type"] == "internal" and "boom" not in answer.text
