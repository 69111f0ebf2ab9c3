"""The access log through the real gateway (uvicorn) against the real upstream: one JSON line per
request on stderr, written by the kairos.access listener thread."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos.middleware.accesslog import AccessLogMiddleware
from kairos.observability.accesslog import AccessLog
from tests.processes import Server, backend, free_port, gateway_server, route

JSON_ENV = {"KAIROS_LOG_FORMAT": "json", "KAIROS_ACCESS_LOG": "true"}


def config(upstream: Server) -> dict[str, Any]:
    return {
        "version": 1,
        "routers": [
            route("/users/{id}", "/echo/users/{id}", [backend(upstream)], ("GET", "POST")),
            route("/refused", "/echo/refused", [backend(free_port())]),
        ],
    }


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    with gateway_server(module_tmp, config(upstream), env=JSON_ENV) as server:
        yield server


def access_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "kairos.access":
                lines.append(entry)
    return lines


def entry_for(server: Server, request_id: str) -> dict[str, Any]:
    """The one access line of ``request_id`` (written by a thread: waits a little for it)."""
    deadline = time.monotonic() + 5
    while True:
        found = [entry for entry in access_lines(server) if entry["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(found) == 1, found
    return found[0]


def test_a_proxied_request_is_one_line_with_route_backend_and_bytes(
    client: httpx.Client, gateway: Server, upstream: Server
) -> None:
    response = client.post(
        "/users/7?token=secret", content=b"x" * 100, headers={"user-agent": "access-test/1"}
    )
    assert response.status_code == 200
    entry = entry_for(gateway, response.headers["x-request-id"])
    assert entry["method"] == "POST"
    assert entry["path"] == "/users/7"  # the query (here a secret) is never logged
    assert entry["route"] == "/users/{id}"
    assert entry["backend"] == f"http://127.0.0.1:{upstream.port}"
    assert entry["status"] == 200
    assert entry["source"] == "upstream"
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["user_agent"] == "access-test/1"
    assert entry["bytes_in"] == 100
    assert entry["bytes_out"] == len(response.content)
    assert 0 < entry["upstream_ms"] <= entry["duration_ms"]
    assert entry["ts"].endswith("+00:00")
    assert "secret" not in gateway.output()


def test_an_unmatched_request_is_logged_as_the_gateways_404(client: httpx.Client, gateway: Server) -> None:
    response = client.get("/nowhere/at/all")
    assert response.status_code == 404
    entry = entry_for(gateway, response.headers["x-request-id"])
    assert entry["route"] is None
    assert entry["backend"] is None
    assert entry["status"] == 404
    assert entry["source"] == "gateway"
    assert entry["upstream_ms"] is None
    assert entry["path"] == "/nowhere/at/all"
    assert entry["bytes_out"] == len(response.content) > 0


def test_a_refused_backend_is_logged_as_the_gateways_502(client: httpx.Client, gateway: Server) -> None:
    response = client.get("/refused", headers={"x-request-id": "my-own-id-123"})
    assert response.status_code == 502
    assert response.headers["x-request-id"] == "my-own-id-123"
    entry = entry_for(gateway, "my-own-id-123")
    assert entry["route"] == "/refused"
    assert entry["backend"] is not None
    assert entry["status"] == 502
    assert entry["source"] == "gateway"


def test_one_line_per_request(client: httpx.Client, gateway: Server) -> None:
    ids = [client.get(f"/users/{n}").headers["x-request-id"] for n in range(5)]
    for request_id in ids:
        entry_for(gateway, request_id)  # exactly one each


def test_access_log_off_writes_no_access_lines(module_tmp: Path, upstream: Server) -> None:
    env = {**JSON_ENV, "KAIROS_ACCESS_LOG": "false"}
    with gateway_server(module_tmp, config(upstream), env=env) as server:
        assert httpx.get(f"{server.url}/users/1", timeout=5).status_code == 200
        assert httpx.get(f"{server.url}/nowhere", timeout=5).status_code == 404
        time.sleep(0.2)
        assert access_lines(server) == []
        assert any(line.startswith('{"ts"') for line in server.output().splitlines())  # other logs stay


def test_the_text_format_is_one_compact_line_written_by_the_listener() -> None:

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    stream = io.StringIO()
    log = AccessLog("text", stream=stream)
    log.start()
    try:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/a\nb",
            "raw_path": b"/a%0Ab?k=secret",
            "headers": [],
        }
        asyncio.run(AccessLogMiddleware(app, log.put)(scope, receive, send))
    finally:
        log.stop()
    (line,) = stream.getvalue().splitlines()
    assert '"GET /a%0Ab" 204 upstream' in line
    assert "upstream=- route=- backend=-" in line
    assert "secret" not in line
